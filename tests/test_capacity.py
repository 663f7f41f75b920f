"""Storage exhaustion (#2): bounded tokens in all, per network and per token, and a /health that
tells when etcd is out of space. A private etcd where a test fills or alarms it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from discoverd import appkeys
from discoverd.app import build_app
from discoverd.config import Settings
from discoverd.store.embedded import EmbeddedEtcd
from tests.support import FREE_PORTS


@pytest.fixture
async def private_etcd(tmp_path) -> AsyncIterator[EmbeddedEtcd]:
    etcd = EmbeddedEtcd(tmp_path / "private", name="capacity")
    await asyncio.to_thread(etcd.start)
    try:
        yield etcd
    finally:
        await asyncio.to_thread(etcd.stop)


def settings_for(etcd: EmbeddedEtcd, tmp_path, **extra) -> Settings:
    return Settings(etcd=etcd.endpoint, data_dir=tmp_path, new_rate=0, **FREE_PORTS, **extra)


async def test_live_tokens_are_capped(aiohttp_client, private_etcd, tmp_path):
    client = await aiohttp_client(build_app(settings_for(private_etcd, tmp_path, max_tokens=3)))
    for _ in range(3):
        assert (await client.post("/new?size=3")).status == 200
    # The cap counts the tokens this replica's view holds, and /new does not wait for the view.
    registry = client.server.app[appkeys.REGISTRY]
    for _ in range(3000):
        if len(registry) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(registry) == 3
    full = await client.post("/new?size=3")
    assert full.status == 503
    assert "maximum of 3 live tokens" in (await full.json())["message"]


def listed(key: str, values: list[str], joined: bool = False) -> str:
    return f"{key}={','.join(values)}" if joined else "&".join(f"{key}={v}" for v in values)


CIDRS = [f"10.0.{i}.0/24" for i in range(5)]
SUFFIXES = [f"e{i}.example.com" for i in range(5)]


@pytest.mark.parametrize(
    ("too_many", "enough", "reason"),
    [
        (listed("cidr", CIDRS), listed("cidr", CIDRS[:4]), "at most 4 cidr ranges"),
        (listed("cidr", CIDRS, True), listed("cidr", CIDRS[:4], True), "at most 4 cidr ranges"),
        (listed("dns", SUFFIXES), listed("dns", SUFFIXES[:4]), "at most 4 dns suffixes"),
    ],
)
async def test_a_token_carries_little(client, too_many, enough, reason):
    response = await client.post(f"/new?size=3&{too_many}")
    assert response.status == 400
    assert reason in (await response.json())["message"]
    assert (await client.post(f"/new?size=3&{enough}")).status == 200


async def test_new_per_hour_per_network(aiohttp_client, settings):
    capped = settings.model_copy(update={"new_per_hour": 2})
    client = await aiohttp_client(build_app(capped))
    assert [(await client.post("/new")).status for _ in range(3)] == [200, 200, 429]
    refused = await client.post("/new")
    assert "from this network this hour" in (await refused.json())["message"]
    assert int(refused.headers["Retry-After"]) > 60


async def test_health_says_when_etcd_is_out_of_space(aiohttp_client, private_etcd, tmp_path):
    client = await aiohttp_client(build_app(settings_for(private_etcd, tmp_path)))
    assert (await client.get("/health")).status == 200
    gateway = client.server.app[appkeys.GATEWAY]
    member = (await gateway.status())["header"]["member_id"]

    def alarm(action: str):
        body = {"action": action, "memberID": member, "alarm": "NOSPACE"}
        return gateway.call(lambda c: c.post(c.get_url("/maintenance/alarm"), json=body))

    await alarm("ACTIVATE")  # what etcd raises itself when its quota is full
    write = await client.post("/new?size=3")
    assert write.status == 503 and "space exceeded" in (await write.json())["message"]
    health = await client.get("/health")
    assert health.status == 503
    body = await health.json()
    assert body["status"] == "unavailable" and "NOSPACE" in body["reason"]
    assert body["etcd"]["alarms"] == ["NOSPACE"]
    assert (
        'discoverd_etcd_alarm{alarm="NOSPACE"} 1.0' in await (await client.get("/metrics")).text()
    )

    await alarm("DEACTIVATE")
    assert (await client.get("/health")).status == 200
    assert (
        'discoverd_etcd_alarm{alarm="NOSPACE"} 0.0' in await (await client.get("/metrics")).text()
    )
    assert (await client.post("/new?size=3")).status == 200
