"""The admin API through the real app on a real etcd: bearer auth, the fleet, no token leaks."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from discoverd import appkeys
from discoverd.logs import fingerprint
from tests.certs.test_handlers import csr, enroll

ROUTE = "/api/v1/admin/clusters"
TOKEN_SHAPED = re.compile(r"[0-9a-fA-F]{32}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_cluster(client, query: str) -> str:
    response = await client.post(f"/new?{query}")
    assert response.status == 200, await response.text()
    return (await response.text()).rsplit("/", 1)[1]


async def fleet(client, admin_token: str, query: str = ""):
    response = await client.get(f"{ROUTE}?{query}", headers=bearer(admin_token))
    text = await response.text()
    assert response.status == 200, text
    assert not TOKEN_SHAPED.search(text), text  # fingerprints only, never a token
    return await response.json()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "basic", "no-token", "empty-token"],
)
async def test_refused_without_the_admin_token(admin_client, admin_token, headers):
    response = await admin_client.get(ROUTE, headers=headers)
    assert response.status == 401, await response.text()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in (await response.json())["message"]


async def test_a_discovery_token_is_no_admin_token(admin_client):
    token = await new_cluster(admin_client, "size=1")
    response = await admin_client.get(ROUTE, headers=bearer(token))
    assert response.status == 401


async def test_off_without_an_admin_token_file(client):
    """Not a token route either: /api/v1/admin/... is never parsed as the token `api`."""
    for headers in ({}, bearer("anything-at-all-here")):
        response = await client.get(ROUTE, headers=headers)
        assert response.status == 404
        assert "admin API is off" in (await response.json())["message"]


async def test_lists_a_cluster_as_it_bootstraps(admin_client, admin_token, tmp_path):
    name = "fleet" + os.urandom(4).hex()
    token = await new_cluster(admin_client, f"size=3&name={name}")
    [entry] = (await fleet(admin_client, admin_token, f"name={name}"))["clusters"]
    assert entry["fingerprint"] == fingerprint(token)
    assert (entry["name"], entry["size"], entry["registered"]) == (name, 3, 0)
    assert entry["bootstrap"]["open"] is True
    assert entry["bootstrap"]["created_at"] < entry["bootstrap"]["until"]
    assert entry["ca"] == {"present": False, "expires_at": None}
    assert entry["certificates"]["count"] == 0

    put = await admin_client.put(f"/{token}/a1", data={"value": "m1=http://10.0.0.1:2380"})
    assert put.status == 201, await put.text()
    assert (await admin_client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 200
    issued = await enroll(admin_client, token, "m1", csr(tmp_path, "m1", "IP:10.0.0.1"))
    assert issued.status == 200, await issued.text()

    [entry] = (await fleet(admin_client, admin_token, f"name={name}"))["clusters"]
    assert entry["registered"] == 1
    assert entry["ca"]["present"] is True and entry["ca"]["expires_at"] > "2030"
    certs = entry["certificates"]
    assert (certs["count"], certs["revoked"], certs["expired"]) == (1, 0, 0)
    assert certs["earliest_expiry"] < entry["ca"]["expires_at"]


async def test_search_and_pages_newest_first(admin_client, admin_token):
    stem = "page" + os.urandom(4).hex()
    tokens = [await new_cluster(admin_client, f"size=1&name={stem}-{i}") for i in range(3)]
    await new_cluster(admin_client, f"size=1&name=other{os.urandom(4).hex()}")
    newest_first = [fingerprint(t) for t in reversed(tokens)]

    everything = await fleet(admin_client, admin_token, f"name={stem.upper()}")
    assert everything["total"] == 3
    assert [c["fingerprint"] for c in everything["clusters"]] == newest_first

    first = await fleet(admin_client, admin_token, f"name={stem}&limit=2")
    rest = await fleet(admin_client, admin_token, f"name={stem}&limit=2&offset=2")
    assert (first["total"], first["limit"], rest["offset"]) == (3, 2, 2)
    pages = first["clusters"] + rest["clusters"]
    assert [c["fingerprint"] for c in pages] == newest_first

    by_print = await fleet(admin_client, admin_token, f"fingerprint={fingerprint(tokens[1])}")
    assert [c["name"] for c in by_print["clusters"]] == [f"{stem}-1"]
    assert (await fleet(admin_client, admin_token, f"name=no{stem}"))["clusters"] == []


async def test_the_whole_fleet_has_no_token_in_it(admin_client, admin_token):
    tokens = [await new_cluster(admin_client, "size=1") for _ in range(3)]
    body = await fleet(admin_client, admin_token, "limit=1000")
    shown = {c["fingerprint"] for c in body["clusters"]}
    assert {fingerprint(t) for t in tokens} <= shown  # newest first: on the first page
    assert body["total"] >= 3


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=ten", "limit must be a whole number"),
        ("offset=-1", "offset must be a whole number"),
        ("name=" + "x" * 65, "name search is at most 64 characters"),
        ("fingerprint=xyz", "fingerprint is 1 to 8 hex characters"),
        ("token=abc", "unknown parameter 'token'"),
    ],
)
async def test_bad_queries_get_a_reason(admin_client, admin_token, query, reason):
    response = await admin_client.get(f"{ROUTE}?{query}", headers=bearer(admin_token))
    assert response.status == 400
    assert reason in (await response.json())["message"]


async def test_a_token_minted_on_another_replica_is_listed_at_once(
    admin_client, client, admin_token, monkeypatch
):
    """The listing waits for this replica's view to catch up with etcd. The view is made to lag
    (its watch events applied 0.3 s late, as on a loaded machine) so that this is certain."""
    registry = admin_client.app[appkeys.REGISTRY]
    apply, loop = registry.apply, asyncio.get_running_loop()
    monkeypatch.setattr(
        registry, "apply", lambda events, rev: loop.call_later(0.3, apply, list(events), rev)
    )
    name = "replica" + os.urandom(4).hex()
    token = await new_cluster(client, f"size=1&name={name}")  # through the other replica
    listed = await fleet(admin_client, admin_token, f"name={name}")
    assert [c["fingerprint"] for c in listed["clusters"]] == [fingerprint(token)]
