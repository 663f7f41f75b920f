"""Revocation that holds (#8), on a real etcd and checked with the real openssl: a renewal
revokes the certificate it replaces, and a key an operator revoked is refused from then on."""

from __future__ import annotations

from discoverd import appkeys
from tests.certs.test_handlers import csr, enroll, new_token, verify


async def renew(client, token: str, certificate: str, request: str):
    return await client.post(
        "/api/v1/certs/renew", json={"token": token, "certificate": certificate, "csr": request}
    )


async def crl(client, token: str) -> str:
    response = await client.get(f"/api/v1/clusters/{token}/crl.pem")
    assert response.status == 200
    return await response.text()


async def test_a_renewal_revokes_the_certificate_it_replaces(client, tmp_path):
    token = await new_token(client)
    first = await (await enroll(client, token, "infra0", csr(tmp_path, "k", "IP:10.0.0.1"))).json()
    second = await renew(client, token, first["certificate"], csr(tmp_path, "k", key="k.key"))
    assert second.status == 200, await second.text()
    second = await second.json()

    revoked = await crl(client, token)
    assert "certificate revoked" in verify(tmp_path, first["ca"], first["certificate"], revoked)
    assert verify(tmp_path, second["ca"], second["certificate"], revoked).strip().endswith("OK")
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert {c["serial"]: c["revoked"] for c in view["certificates"]} == {
        first["serial"]: True,
        second["serial"]: False,
    }
    # The renewed certificate renews again: a renewal's revocation is not the key's.
    third = await renew(client, token, second["certificate"], csr(tmp_path, "k", key="k.key"))
    assert third.status == 200, await third.text()
    replay = await renew(client, token, first["certificate"], csr(tmp_path, "k", key="k.key"))
    assert replay.status == 409 and "renewed already" in (await replay.json())["message"]


async def test_a_revoked_key_is_refused_for_enrollment_and_renewal(client, tmp_path):
    token = await new_token(client)
    peer = await (await enroll(client, token, "infra0", csr(tmp_path, "k", "IP:10.0.0.1"))).json()
    same_key = csr(tmp_path, "k", "IP:10.0.0.1", key="k.key")
    server = await enroll(client, token, "infra0", same_key, "server")
    assert server.status == 200
    server = await server.json()
    await client.server.app[appkeys.AUTHORITY].revoke(token, peer["serial"])

    again = await enroll(client, token, "infra0", same_key)
    assert again.status == 403
    assert "key belongs to a revoked certificate" in (await again.json())["message"]
    elsewhere = await enroll(
        client, token, "infra1", csr(tmp_path, "k", "IP:10.0.0.2", key="k.key")
    )
    assert elsewhere.status == 403
    kept = await renew(client, token, server["certificate"], csr(tmp_path, "k", key="k.key"))
    assert kept.status == 403
    assert "key belongs to a revoked certificate" in (await kept.json())["message"]

    fresh = await enroll(client, token, "infra0", csr(tmp_path, "new", "IP:10.0.0.1"))
    assert fresh.status == 200, await fresh.text()  # a new key re-enrolls the freed name
