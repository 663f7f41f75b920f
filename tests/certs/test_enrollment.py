"""Enrollments at the same moment (issue 11), on a real etcd with real CSRs: the members of a
cluster enroll together by design, so one token's enrollments share etcd transactions (group
commit), none is refused for contention, the cap holds across replicas, and clusters enrolled
by a version that kept a roster list keep their cap."""

from __future__ import annotations

import asyncio
import json

from discoverd import appkeys
from discoverd.app import build_app
from discoverd.store import keys
from tests.certs.test_handlers import csr, enroll, new_token


def count_transactions(monkeypatch, client) -> list[dict]:
    """Every etcd transaction the app sends from now on, through its gateway."""
    gateway = client.server.app[appkeys.GATEWAY]
    sent: list[dict] = []
    real = gateway.txn

    async def txn(body):
        sent.append(body)
        return await real(body)

    monkeypatch.setattr(gateway, "txn", txn)
    return sent


async def stored(client, key: str) -> bytes | None:
    _, kv = await client.server.app[appkeys.GATEWAY].get(key)
    return None if kv is None else kv.value


async def test_a_cluster_enrolling_at_once_shares_transactions(
    aiohttp_client, settings, tmp_path, monkeypatch
):
    client = await aiohttp_client(build_app(settings.model_copy(update={"max_size": 999})))
    token = await new_token(client, "size=999")
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 200  # CA first
    requests = [csr(tmp_path, f"m{i}", f"IP:10.0.1.{i + 1}") for i in range(16)]
    sent = count_transactions(monkeypatch, client)
    responses = await asyncio.gather(
        *(enroll(client, token, f"m{i}", requests[i]) for i in range(16))
    )
    assert [r.status for r in responses] == [200] * 16, [await r.text() for r in responses]
    assert 1 <= len(sent) <= 6, f"{len(sent)} transactions for 16 enrollments"
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert sorted(c["name"] for c in view["certificates"]) == sorted(f"m{i}" for i in range(16))
    assert await stored(client, keys.enrolled_count(token, "peer")) == b"16"


async def test_the_cap_holds_across_replicas(client, aiohttp_client, settings, tmp_path):
    token = await new_token(client, "size=3")
    await client.get(f"/api/v1/clusters/{token}/ca.pem")
    other = await aiohttp_client(build_app(settings))  # a second replica: same etcd, same key
    requests = [csr(tmp_path, f"u{i}") for i in range(20)]
    responses = await asyncio.gather(
        *(
            enroll(client if i % 2 else other, token, f"u{i}", requests[i], profile="client")
            for i in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == 3 and statuses.count(403) == 17, statuses
    assert await stored(client, keys.enrolled_count(token, "client")) == b"3"


async def test_one_name_twice_at_once_gets_one_certificate(client, tmp_path):
    token = await new_token(client, "size=5")
    requests = [csr(tmp_path, f"same{i}", "IP:10.0.0.9") for i in range(4)]
    responses = await asyncio.gather(*(enroll(client, token, "infra0", r) for r in requests))
    assert sorted(r.status for r in responses) == [200, 409, 409, 409]
    assert await stored(client, keys.enrolled_count(token, "peer")) == b"1"


async def legacy(client, token: str, profile: str, names: list[str]) -> None:
    """Make the cluster's enrollment state what an older version left: the `enrolled/` claims
    and a roster list, no count."""
    gateway = client.server.app[appkeys.GATEWAY]
    _, count = await gateway.get(keys.enrolled_count(token, profile))
    assert count is not None
    roster = json.dumps(sorted(names))
    txn = {
        "compare": [],
        "success": [
            {"request_delete_range": {"key": _b64(keys.enrolled_count(token, profile))}},
            {"request_put": {"key": _b64(keys.roster(token, profile)), "value": _b64(roster),
                             "lease": count.lease}},
        ],
        "failure": [],
    }  # fmt: skip
    await gateway.txn(txn)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def test_a_roster_cluster_keeps_its_cap(client, aiohttp_client, settings, tmp_path):
    token = await new_token(client, "size=3")
    for name, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        assert (await enroll(client, token, name, csr(tmp_path, name, f"IP:{ip}"))).status == 200
    await legacy(client, token, "peer", ["a", "b"])
    upgraded = await aiohttp_client(build_app(settings))  # a replica that never saw a count
    statuses = [
        (await enroll(upgraded, token, name, csr(tmp_path, name, f"IP:{ip}"))).status
        for name, ip in (("c", "10.0.0.3"), ("d", "10.0.0.4"), ("a", "10.0.0.1"))
    ]
    assert statuses == [200, 403, 409]
    assert await stored(client, keys.enrolled_count(token, "peer")) == b"3"
    assert await stored(client, keys.roster(token, "peer")) is None  # migrated


async def test_revoking_in_a_roster_cluster_frees_a_place(
    client, aiohttp_client, settings, tmp_path
):
    token = await new_token(client, "size=2")
    issued = []
    for name, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        response = await enroll(client, token, name, csr(tmp_path, name, f"IP:{ip}"))
        issued.append(await response.json())
    await legacy(client, token, "peer", ["a", "b"])
    upgraded = await aiohttp_client(build_app(settings))
    await upgraded.server.app[appkeys.AUTHORITY].revoke(token, issued[0]["serial"])
    assert await stored(client, keys.enrolled_count(token, "peer")) == b"1"
    late = await enroll(upgraded, token, "c", csr(tmp_path, "c", "IP:10.0.0.3"))
    assert late.status == 200, await late.text()
    full = await enroll(upgraded, token, "d", csr(tmp_path, "d", "IP:10.0.0.4"))
    assert full.status == 403


async def test_clusters_enrolling_together_share_transactions(client, tmp_path, monkeypatch):
    sizes = {"a": 3, "b": 1, "c": 2}
    tokens = {label: await new_token(client, f"size={size}") for label, size in sizes.items()}
    for token in tokens.values():
        await client.get(f"/api/v1/clusters/{token}/ca.pem")
    sent = count_transactions(monkeypatch, client)
    asked = [(label, n) for label in sizes for n in range(3)]
    requests = {
        (label, n): csr(tmp_path, f"{label}{n}", f"IP:10.0.0.{n + 1}") for label, n in asked
    }
    responses = await asyncio.gather(
        *(enroll(client, tokens[label], f"m{n}", requests[label, n]) for label, n in asked)
    )
    statuses: dict[str, list[int]] = {label: [] for label in sizes}
    for (label, _), response in zip(asked, responses, strict=True):
        statuses[label].append(response.status)
    statuses = {label: sorted(found) for label, found in statuses.items()}
    assert statuses == {"a": [200, 200, 200], "b": [200, 403, 403], "c": [200, 200, 403]}
    assert len(sent) <= 5, f"{len(sent)} transactions for 9 enrollments in 3 clusters"
    for label, size in sizes.items():
        assert (
            await stored(client, keys.enrolled_count(tokens[label], "peer")) == str(size).encode()
        )
