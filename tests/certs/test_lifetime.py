"""How long a cluster lives, on a real etcd: the token's lease, or the CA's once a member has
enrolled; the name reservation always with the cluster. The end of the bootstrap window is
played by revoking the token's lease through the gateway (what etcd does when it expires)."""

from __future__ import annotations

import asyncio
import os

import dns.asyncquery
import dns.message
import dns.rcode

from discoverd import appkeys
from discoverd.store import keys
from tests.certs.test_handlers import csr, enroll, new_token


async def config_lease(client, token: str) -> int:
    _, kv = await client.server.app[appkeys.GATEWAY].get(keys.cluster_config(token))
    assert kv is not None
    return kv.lease


async def expire(client, lease: int) -> None:
    """The token's lease ends, as it does a minute after --token-ttl."""
    gateway = client.server.app[appkeys.GATEWAY]
    await gateway.call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease}))


async def gone_from_view(client, token: str) -> bool:
    return (await client.get(f"/api/v1/clusters/{token}")).status == 404


async def wait_gone(client, token: str) -> None:
    for _ in range(200):
        if await gone_from_view(client, token):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"cluster {token[:6]}… still in the view")


async def resolve(client, name: str) -> list[str]:
    port = client.server.app[appkeys.DNS_SERVER].port
    reply = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port)
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
        return []
    return [rr.to_text() for rr in reply.answer[0]]


async def test_a_named_cluster_keeps_its_name_after_the_bootstrap_window(client, tmp_path):
    """#5: the name reservation lived on the token's lease while the cluster lived on the CA's;
    after the window an attacker's /new?name=prod took the name and its DNS."""
    name = "prod-" + os.urandom(4).hex()
    token = await new_token(client, f"size=3&name={name}")
    token_lease = await config_lease(client, token)
    issued = await enroll(
        client,
        token,
        "infra0",
        csr(tmp_path, "infra0", f"IP:10.0.0.1,DNS:infra0.{name}.etcd.internal"),
    )
    assert issued.status == 200, await issued.text()
    member = {"peer_urls": ["https://10.0.0.1:2380"]}
    assert (await client.put(f"/api/v1/clusters/{token}/members/infra0", json=member)).status == 200
    await expire(client, token_lease)

    gateway = client.server.app[appkeys.GATEWAY]
    _, name_kv = await gateway.get(keys.cluster_name(name))
    assert name_kv is not None and name_kv.value == token.encode()
    taken = await client.post(f"/new?size=3&name={name}")
    assert taken.status == 409, await taken.text()
    assert "is taken" in (await taken.json())["message"]
    assert await resolve(client, f"infra0.{name}.etcd.internal") == ["10.0.0.1"]
    assert (await client.get(f"/api/v1/clusters/{token}")).status == 200
    assert name_kv.lease == await config_lease(client, token) != token_lease


async def test_a_ca_nobody_enrolled_with_does_not_keep_a_token_alive(client):
    """#2: any anonymous GET of ca.pem turned a 7-day token into a 10-year record."""
    name = "idle-" + os.urandom(4).hex()
    token = await new_token(client, f"size=3&name={name}")
    token_lease = await config_lease(client, token)
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 200
    assert await config_lease(client, token) == token_lease
    _, ca_kv = await client.server.app[appkeys.GATEWAY].get(keys.cluster_ca(token))
    assert ca_kv is not None and ca_kv.lease == token_lease

    await expire(client, token_lease)

    await wait_gone(client, token)
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 404
    _, name_kv = await client.server.app[appkeys.GATEWAY].get(keys.cluster_name(name))
    assert name_kv is None  # the name went with its cluster: it is free again
    assert (await client.post(f"/new?size=3&name={name}")).status == 200


async def test_concurrent_first_enrollments_hold_the_cluster_once(client, tmp_path):
    """Peer, server and client enrollments racing to be the first: every record, the config,
    the CA and the name end up on one lease, the CA's."""
    name = "race-" + os.urandom(4).hex()
    token = await new_token(client, f"size=3&name={name}")
    token_lease = await config_lease(client, token)
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 200
    requests = [
        ("peer", csr(tmp_path, "p", "IP:10.0.0.1")),
        ("server", csr(tmp_path, "s", "IP:10.0.0.1")),
        ("client", csr(tmp_path, "c")),
    ]
    responses = await asyncio.gather(
        *(enroll(client, token, "infra0", request, profile) for profile, request in requests)
    )
    assert [r.status for r in responses] == [200, 200, 200]
    gateway = client.server.app[appkeys.GATEWAY]
    held = await config_lease(client, token)
    assert held != token_lease
    _, kvs = await gateway.range_prefix(keys.cluster_prefix(token))
    assert {kv.lease for kv in kvs} == {held}
    _, name_kv = await gateway.get(keys.cluster_name(name))
    assert name_kv is not None and name_kv.lease == held


async def test_an_expired_token_gets_no_ca(client):
    token = await new_token(client)
    await expire(client, await config_lease(client, token))
    await wait_gone(client, token)
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == 404
