"""The etcd3gw facade against a real etcd: failover, bounded time, exception translation."""

from __future__ import annotations

import time

import pytest

from discoverd.errors import Unavailable
from discoverd.store.embedded import free_port
from discoverd.store.gateway import EtcdGateway, EtcdRejected, b64


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


async def test_fails_over_to_the_endpoint_that_answers(etcd_endpoint):
    failures = []
    gateway = EtcdGateway([dead_endpoint(), etcd_endpoint], timeout=1)
    gateway.on_failure = lambda: failures.append(1)
    try:
        status = await gateway.status()
        assert status["version"]
        assert len(failures) == 1
        await gateway.status()  # the endpoint that answered is now tried first
        assert len(failures) == 1
    finally:
        gateway.close()


async def test_all_endpoints_down_is_unavailable_within_5s():
    gateway = EtcdGateway([dead_endpoint(), dead_endpoint(), dead_endpoint()], timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="backing etcd is unavailable"):
            await gateway.status()
    finally:
        gateway.close()
    assert time.monotonic() - started < 5


async def test_a_refusal_is_not_a_failover(etcd_endpoint):
    gateway = EtcdGateway([etcd_endpoint], timeout=2)
    bad_lease = {"request_put": {"key": b64("/discoverd-test/x"), "value": b64("v"), "lease": 1}}
    try:
        with pytest.raises(EtcdRejected, match="lease not found"):
            await gateway.txn({"compare": [], "success": [bad_lease], "failure": []})
    finally:
        gateway.close()


def test_range_reads_every_page(etcd_endpoint, monkeypatch):
    monkeypatch.setattr("discoverd.store.gateway.RANGE_PAGE", 3)
    gateway = EtcdGateway([etcd_endpoint], timeout=2)
    prefix = f"/discoverd-test/paging-{time.monotonic_ns()}/"
    try:
        for i in range(10):
            gateway.call_sync(lambda c, i=i: c.put(f"{prefix}{i:02d}", str(i)))
        revision, kvs = gateway.range_prefix_sync(prefix)
        assert [kv.value for kv in kvs] == [str(i).encode() for i in range(10)]
        assert revision >= max(kv.mod_revision for kv in kvs)
    finally:
        gateway.close()
