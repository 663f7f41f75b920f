"""Backing etcd down: every route answers 503 (v2 JSON) within 5 s, held waits survive, and the
service recovers by itself when etcd returns."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from discoverd import app as app_module
from discoverd.app import build_app
from discoverd.config import Settings
from discoverd.store.embedded import EmbeddedEtcd, free_port
from tests.support import FREE_PORTS

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN = "0123456789abcdef0123456789abcdef"

ROUTES = [
    ("GET", f"/{TOKEN}/_config/size", None),
    ("GET", f"/{TOKEN}", None),
    ("PUT", f"/{TOKEN}/abc", "value=a=http://10.0.0.1:2380"),
    ("POST", "/new?size=3", None),
]


async def timed(client, method, path, body=None):
    started = time.monotonic()
    response = await client.request(method, path, data=body, headers=FORM if body else None)
    return response, time.monotonic() - started


@pytest.fixture
def quick_start(monkeypatch):
    monkeypatch.setattr(app_module, "FIRST_SYNC_WAIT", 0.5)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_etcd_never_reachable(aiohttp_client, tmp_path, quick_start, method, path, body):
    settings = Settings(
        etcd=f"http://127.0.0.1:{free_port()}", data_dir=tmp_path, new_rate=0, **FREE_PORTS
    )
    client = await aiohttp_client(build_app(settings))
    response, took = await timed(client, method, path, body)
    assert response.status == 503
    assert took < 5
    error = await response.json()
    assert error["errorCode"] == 300 and error["message"]
    health = await client.get("/health")
    assert health.status == 503
    assert (await health.json())["status"] == "unavailable"


async def test_etcd_stops_and_returns(aiohttp_client, tmp_path):
    etcd = EmbeddedEtcd(tmp_path / "backing", name="outage")
    etcd.start()
    try:
        settings = Settings(
            etcd=etcd.endpoint, data_dir=tmp_path, new_rate=0, wait_timeout="30s", **FREE_PORTS
        )
        client = await aiohttp_client(build_app(settings))
        token = (await (await client.post("/new?size=3")).text()).rsplit("/", 1)[1]
        first = await client.put(f"/{token}/a1", data="value=m1=http://10.0.0.1:2380", headers=FORM)
        assert first.status == 201
        index = int(first.headers["X-Etcd-Index"])
        held = await client.get(f"/{token}?recursive=true&wait=true&waitIndex={index + 1}")
        held_body = asyncio.create_task(held.json())

        await asyncio.to_thread(etcd.stop)
        for method, route, body in ROUTES:
            path = route.replace(TOKEN, token)
            deadline = time.monotonic() + 5
            while True:  # reads are served from the view until the outage is noticed
                response, took = await timed(client, method, path, body)
                assert took < 5
                if response.status == 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert response.status == 503, (method, path, await response.text())
            assert (await response.json())["errorCode"] == 300
        assert (await client.get("/health")).status == 503
        assert not held_body.done()  # a wait on a known token is held through the outage

        await asyncio.to_thread(etcd.start)
        deadline = time.monotonic() + 15
        while (await client.get("/health")).status != 200:
            assert time.monotonic() < deadline, "discoverd did not recover after etcd returned"
            await asyncio.sleep(0.1)
        second = await client.put(
            f"/{token}/a2", data="value=m2=http://10.0.0.2:2380", headers=FORM
        )
        assert second.status == 201
        event = await asyncio.wait_for(held_body, 5)
        assert event["node"]["key"] == f"/{token}/a2"
        listing = await (await client.get(f"/{token}")).json()
        assert [n["key"][-2:] for n in listing["node"]["nodes"]] == ["a1", "a2"]
    finally:
        await asyncio.to_thread(etcd.stop)


async def test_a_frozen_etcd_stops_the_view_within_2s(aiohttp_client, tmp_path):
    """A frozen etcd (SIGSTOP: it accepts connections and never answers) must not leave GETs
    answering 200 from a view that no longer follows etcd: 503 within ~2 s, then recovery."""
    etcd = EmbeddedEtcd(tmp_path / "backing", name="frozen")
    etcd.start()
    try:
        assert etcd.process is not None
        pid = etcd.process.pid
        settings = Settings(etcd=etcd.endpoint, data_dir=tmp_path, new_rate=0, **FREE_PORTS)
        client = await aiohttp_client(build_app(settings))
        token = (await (await client.post("/new?size=3")).text()).rsplit("/", 1)[1]
        size = f"/{token}/_config/size"
        assert (await client.get(size)).status == 200
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            while (response := await client.get(size)).status == 200:
                assert time.monotonic() - frozen < 3, "the view kept serving a frozen etcd"
                await asyncio.sleep(0.02)
            assert response.status == 503
            assert (await response.json())["errorCode"] == 300
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while (await client.get(size)).status != 200:
            assert time.monotonic() < deadline, "discoverd did not recover after etcd thawed"
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(etcd.stop)
