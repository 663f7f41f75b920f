"""DNS while the registry view is not in step with etcd: SERVFAIL, never an authoritative
NXDOMAIN that resolvers would cache for a cluster that exists. A real etcd, stopped and
started again; dnspython over UDP and TCP."""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from discoverd import app as app_module
from discoverd import appkeys
from discoverd.app import build_app
from discoverd.config import Settings
from discoverd.directory import rules
from discoverd.store.embedded import EmbeddedEtcd

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def rcode(port: int, name: str, tcp: bool = False) -> int:
    query = dns.message.make_query(name, "SRV")
    if tcp:
        reply = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=3)
    else:
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3)
    return reply.rcode()


async def until_rcode(port: int, name: str, wanted: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := await rcode(port, name)) != wanted:
        assert time.monotonic() < deadline, f"{name}: {dns.rcode.to_text(got)}, not {wanted}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def etcd(tmp_path):
    etcd = EmbeddedEtcd(tmp_path / "backing", name="dns-sync")
    await asyncio.to_thread(etcd.start)
    yield etcd
    await asyncio.to_thread(etcd.stop)


async def test_servfail_until_synced_and_while_stale(aiohttp_client, tmp_path, etcd, monkeypatch):
    monkeypatch.setattr(app_module, "FIRST_SYNC_WAIT", 0.5)
    await asyncio.to_thread(etcd.stop)  # down before discoverd starts: the view is never read
    settings = Settings(
        etcd=etcd.endpoint,
        data_dir=tmp_path,
        new_rate=0,
        dns_listen="127.0.0.1:0",
        grpc_listen="127.0.0.1:0",
    )
    client = await aiohttp_client(build_app(settings))
    port = client.server.app[appkeys.DNS_SERVER].port
    unknown = f"_etcd-server._tcp.{'0' * 32}.etcd.internal"
    for name in (unknown, "etcd.internal"):
        for tcp in (False, True):
            assert await rcode(port, name, tcp) == dns.rcode.SERVFAIL
    assert await rcode(port, "example.com") == dns.rcode.REFUSED  # not ours, synced or not

    await asyncio.to_thread(etcd.start)  # the same address: the view reads it and answers
    await until_rcode(port, unknown, dns.rcode.NXDOMAIN)
    token = (await (await client.post("/new?size=3")).text()).rsplit("/", 1)[1]
    put = await client.put(f"/{token}/1", data="value=m0=http://10.0.0.1:2380", headers=FORM)
    assert put.status == 201
    known = f"_etcd-server._tcp.{rules.cluster_label(token)}.etcd.internal"
    assert await rcode(port, known) == dns.rcode.NOERROR

    await asyncio.to_thread(etcd.stop)  # stale: its answers are no longer known to be true
    await until_rcode(port, known, dns.rcode.SERVFAIL)
    assert await rcode(port, unknown) == dns.rcode.SERVFAIL
    assert await rcode(port, known, tcp=True) == dns.rcode.SERVFAIL

    await asyncio.to_thread(etcd.start)
    await until_rcode(port, known, dns.rcode.NOERROR)
    assert await rcode(port, unknown) == dns.rcode.NXDOMAIN
