"""The CA over HTTP on a real etcd, checked with the real openssl."""

from __future__ import annotations

import asyncio
import base64
import subprocess

import pytest

from discoverd import appkeys
from discoverd.app import build_app
from discoverd.directory.rules import cluster_label as label
from discoverd.store import keys


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def csr(tmp_path, name: str, sans: str = "", key: str | None = None) -> str:
    key_path = tmp_path / (key or f"{name}.key")
    keygen = [] if key_path.exists() else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    use_key = ["-key", str(key_path)] if key_path.exists() else ["-keyout", str(key_path)]
    extra = ["-addext", f"subjectAltName={sans}"] if sans else []
    out = openssl("req", "-new", *keygen, *use_key, "-nodes", "-subj", f"/CN={name}", *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def new_token(client, query="size=3") -> str:
    response = await client.post(f"/new?{query}")
    assert response.status == 200, await response.text()
    return (await response.text()).rsplit("/", 1)[1]


async def enroll(client, token, name, request, profile="peer"):
    return await client.post(
        "/api/v1/certs", json={"token": token, "name": name, "csr": request, "profile": profile}
    )


def verify(tmp_path, ca_pem: str, cert_pem: str, crl_pem: str | None = None) -> str:
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "leaf.pem").write_text(cert_pem)
    extra = []
    if crl_pem is not None:
        (tmp_path / "crl.pem").write_text(crl_pem)
        extra = ["-crl_check", "-CRLfile", str(tmp_path / "crl.pem")]
    out = openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), *extra, str(tmp_path / "leaf.pem"))
    return out.stdout + out.stderr


async def test_enroll_a_peer_certificate(client, tmp_path):
    token = await new_token(client)
    ca = await client.get(f"/api/v1/clusters/{token}/ca.pem")
    assert ca.status == 200 and ca.content_type == "application/x-pem-file"
    ca_pem = await ca.text()
    assert ca_pem == await (await client.get(f"/api/v1/clusters/{token}/ca.pem")).text()
    assert token not in ca_pem  # the token is a secret; CA subjects are shown to every peer
    request = csr(
        tmp_path,
        "infra0",
        f"IP:10.0.0.1,DNS:infra0.{label(token)}.etcd.internal,DNS:{label(token)}.etcd.internal",
    )
    response = await enroll(client, token, "infra0", request)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["ca"] == ca_pem
    assert verify(tmp_path, ca_pem, body["certificate"]).strip().endswith("OK")
    text = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text").stdout
    for expected in (
        "IP Address:10.0.0.1",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:localhost",
        f"DNS:infra0.{label(token)}.etcd.internal",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
    ):
        assert expected in text, expected  # fmt: skip
    assert token not in text  # the token is a secret: never in a certificate
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert [(c["name"], c["profile"], c["revoked"]) for c in view["certificates"]] == [
        ("infra0", "peer", False)
    ]
    assert view["certificates"][0]["serial"] == body["serial"]
    assert len(view["ca_sha256"]) == 64


async def test_one_certificate_per_name_and_profile(client, tmp_path):
    token = await new_token(client)
    request = csr(tmp_path, "infra0", "IP:10.0.0.1")
    assert (await enroll(client, token, "infra0", request)).status == 200
    again = await enroll(client, token, "infra0", csr(tmp_path, "infra0b", "IP:10.0.0.1"))
    assert again.status == 409
    assert "already has a peer certificate" in (await again.json())["message"]
    assert (await enroll(client, token, "infra0", request, profile="server")).status == 200
    assert (
        await enroll(client, token, "infra0", csr(tmp_path, "root"), profile="client")
    ).status == 200


async def test_enrollment_closes_at_the_cluster_size(client, tmp_path):
    token = await new_token(client, "size=1")
    assert (await enroll(client, token, "a", csr(tmp_path, "a", "IP:10.0.0.1"))).status == 200
    late = await enroll(client, token, "b", csr(tmp_path, "b", "IP:10.0.0.2"))
    assert late.status == 403
    assert "enrollment is closed" in (await late.json())["message"]


async def test_cidr_and_dns_given_at_creation(client, tmp_path):
    token = await new_token(client, "size=3&cidr=203.0.113.0/24&dns=etcd.example.com")
    ok = await enroll(
        client, token, "a", csr(tmp_path, "a", "IP:203.0.113.5,DNS:a.etcd.example.com")
    )
    assert ok.status == 200
    refused = await enroll(client, token, "b", csr(tmp_path, "b", "IP:198.51.100.1"))
    assert refused.status == 400
    message = (await refused.json())["message"]
    assert "198.51.100.1" in message and "203.0.113.0/24" in message


BAD = [
    ({"name": "infra0", "csr": "garbage", "profile": "peer"}, 400, "not a PEM certificate request"),
    (
        {"name": "infra0", "csr": "{csr}", "profile": "admin"},
        400,
        "profile must be peer, server or client",
    ),
    ({"name": "bad.name", "csr": "{csr}", "profile": "peer"}, 400, "DNS label"),
    ({"name": "infra0", "csr": "{csr}", "profile": "peer", "key": "x"}, 400, "Extra inputs"),
    ({"name": "infra0", "csr": "{csr8}", "profile": "peer"}, 400, "IP SAN 8.8.8.8 is not allowed"),
    ({"name": "infra0", "csr": "{csrwild}", "profile": "peer"}, 400, "wildcard"),
    ({"name": "infra0", "csr": "{csrdns}", "profile": "peer"}, 400, "'example.com' is not allowed"),
    (
        {"name": "alice", "csr": "{csr}", "profile": "client"},
        400,
        "client certificate carries no SANs",
    ),
]


@pytest.mark.parametrize(("fields", "status", "reason"), BAD)
async def test_refusals_name_the_problem(client, tmp_path, fields, status, reason):
    token = await new_token(client)
    requests = {
        "{csr}": csr(tmp_path, "infra0", "IP:10.0.0.1"),
        "{csr8}": csr(tmp_path, "x8", "IP:8.8.8.8"),
        "{csrwild}": csr(tmp_path, "xw", f"DNS:*.{label(token)}.etcd.internal"),
        "{csrdns}": csr(tmp_path, "xd", "DNS:example.com"),
    }
    body = {"token": token, **{k: requests.get(v, v) for k, v in fields.items()}}
    response = await client.post("/api/v1/certs", json=body)
    assert response.status == status
    assert reason in (await response.json())["message"]
    assert (await (await client.get(f"/api/v1/clusters/{token}")).json())["certificates"] == []


@pytest.mark.parametrize(("token", "status"), [("0" * 32, 404), ("NOTATOKEN", 400)])
async def test_unknown_or_malformed_tokens(client, tmp_path, token, status):
    response = await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    assert response.status == status
    assert (await client.get(f"/api/v1/clusters/{token}/ca.pem")).status == status


async def test_renew_proves_possession_and_keeps_the_sans(client, tmp_path):
    token = await new_token(client)
    first = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    same_key = csr(tmp_path, "infra0", key="infra0.key")
    renewed = await client.post(
        "/api/v1/certs/renew",
        json={"token": token, "certificate": first["certificate"], "csr": same_key},
    )
    assert renewed.status == 200, await renewed.text()
    second = await renewed.json()
    assert second["serial"] != first["serial"]
    (tmp_path / "r.pem").write_text(second["certificate"])
    assert (
        "IP Address:10.0.0.1"
        in openssl("x509", "-in", str(tmp_path / "r.pem"), "-noout", "-text").stdout
    )

    replay = await client.post(
        "/api/v1/certs/renew",
        json={"token": token, "certificate": first["certificate"], "csr": same_key},
    )
    assert replay.status == 409 and "renewed already" in (await replay.json())["message"]
    stolen = await client.post(
        "/api/v1/certs/renew",
        json={"token": token, "certificate": second["certificate"], "csr": csr(tmp_path, "thief")},
    )
    assert stolen.status == 403
    assert "signed with the key of the certificate" in (await stolen.json())["message"]


async def test_a_certificate_of_another_cluster_cannot_renew_here(client, tmp_path):
    token_a, token_b = await new_token(client), await new_token(client)
    cert_a = await (
        await enroll(client, token_a, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    ca_b = await (await client.get(f"/api/v1/clusters/{token_b}/ca.pem")).text()
    assert "OK" not in verify(tmp_path, ca_b, cert_a["certificate"]).splitlines()[-1]
    renew = await client.post(
        "/api/v1/certs/renew",
        json={
            "token": token_b,
            "certificate": cert_a["certificate"],
            "csr": csr(tmp_path, "infra0", key="infra0.key"),
        },
    )
    assert (
        renew.status == 403 and "not issued by this cluster's CA" in (await renew.json())["message"]
    )


async def test_revocation_reaches_the_crl_and_blocks_renewal(client, tmp_path):
    token = await new_token(client)
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    authority = client.server.app[appkeys.AUTHORITY]
    await authority.revoke(token, issued["serial"])
    crl = await client.get(f"/api/v1/clusters/{token}/crl.pem")
    assert crl.status == 200
    crl_pem = await crl.text()
    ca_pem = issued["ca"]
    assert "certificate revoked" in verify(tmp_path, ca_pem, issued["certificate"], crl_pem)
    renew = await client.post(
        "/api/v1/certs/renew",
        json={
            "token": token,
            "certificate": issued["certificate"],
            "csr": csr(tmp_path, "infra0", key="infra0.key"),
        },
    )
    assert renew.status == 403 and "revoked" in (await renew.json())["message"]
    # Revoking frees the name: the node can be enrolled again.
    again = await enroll(client, token, "infra0", csr(tmp_path, "infra0new", "IP:10.0.0.1"))
    assert again.status == 200


async def test_ca_keys_are_sealed_in_etcd_and_never_returned(client, tmp_path):
    token = await new_token(client)
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    gateway = client.server.app[appkeys.GATEWAY]
    _, kv = await gateway.get(keys.cluster_ca(token))
    assert b"PRIVATE KEY" not in kv.value and b"PRIVATE KEY" not in base64.b64decode(
        __import__("json").loads(kv.value)["sealed_key"]
    )
    for path in (
        f"/api/v1/clusters/{token}",
        f"/api/v1/clusters/{token}/ca.pem",
        f"/api/v1/clusters/{token}/crl.pem",
    ):
        assert "PRIVATE" not in await (await client.get(path)).text()
    assert "PRIVATE" not in str(issued)


async def test_a_replica_with_another_service_key_refuses_clearly(
    client, aiohttp_client, settings, tmp_path
):
    token = await new_token(client)
    await client.get(f"/api/v1/clusters/{token}/ca.pem")  # the CA now exists, sealed
    other_dir = tmp_path / "other"
    other = await aiohttp_client(build_app(settings.model_copy(update={"data_dir": other_dir})))
    response = await enroll(other, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    assert response.status == 503
    assert "service key" in (await response.json())["message"]
    assert (other_dir / "service.key").stat().st_mode & 0o777 == 0o600


async def test_crl_in_der_for_etcd_36(client, tmp_path):
    token = await new_token(client)
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    await client.server.app[appkeys.AUTHORITY].revoke(token, issued["serial"])
    der = await client.get(f"/api/v1/clusters/{token}/crl.der")
    assert der.status == 200 and der.content_type == "application/pkix-crl"
    (tmp_path / "crl.der").write_bytes(await der.read())
    text = openssl(
        "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text"
    ).stdout
    assert f"Serial Number: {issued['serial'].upper()}" in text


async def test_client_identities_are_set_at_creation(client, tmp_path):
    token = await new_token(client, "size=1&clients=3")
    statuses = [
        (await enroll(client, token, user, csr(tmp_path, user), profile="client")).status
        for user in ("admin", "backup", "monitor", "extra")
    ]
    assert statuses == [200, 200, 200, 403]
    bad = await client.post("/new?size=3&clients=lots")
    assert bad.status == 400


async def test_the_ca_outlives_the_bootstrap_window(client, tmp_path, monkeypatch):
    token = await new_token(client)
    await client.put(
        f"/{token}/1",
        data="value=infra0=http://10.0.0.1:2380",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    gateway = client.server.app[appkeys.GATEWAY]
    _, config_kv = await gateway.get(keys.cluster_config(token))
    _, member_kv = await gateway.get(keys.v2_member(token, "1"))
    _, cert_kv = await gateway.get(keys.certificate(token, issued["serial"]))
    assert config_kv.lease != member_kv.lease  # registrations keep the token's lease
    assert cert_kv.lease == config_kv.lease  # the inventory lives as long as the CA
    ttl = await gateway.call(
        lambda c: c.post(c.get_url("/kv/lease/timetolive"), json={"ID": config_kv.lease})
    )
    assert int(ttl["TTL"]) > 365 * 86400

    # After the bootstrap window (--token-ttl) discovery and enrollment are closed...
    import time as real_time

    import discoverd.directory.service as service_module

    later = real_time.time() + 8 * 86400
    monkeypatch.setattr(service_module.time, "time", lambda: later)
    assert (await client.get(f"/{token}/_config/size")).status == 404
    late = await enroll(client, token, "infra1", csr(tmp_path, "infra1", "IP:10.0.0.2"))
    assert late.status == 404 and "expired" in (await late.json())["message"]
    # ...while renewal, revocation's CRL and the view go on.
    renewed = await client.post(
        "/api/v1/certs/renew",
        json={
            "token": token,
            "certificate": issued["certificate"],
            "csr": csr(tmp_path, "infra0", key="infra0.key"),
        },
    )
    assert renewed.status == 200
    assert (await client.get(f"/api/v1/clusters/{token}/crl.pem")).status == 200
    assert (await client.get(f"/api/v1/clusters/{token}")).status == 200


async def test_the_enrollment_cap_holds_under_concurrency(client, tmp_path):
    token = await new_token(client, "size=3")
    requests = [csr(tmp_path, f"user{i}") for i in range(20)]
    responses = await asyncio.gather(
        *(enroll(client, token, f"user{i}", requests[i], profile="client") for i in range(20))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == 3 and statuses.count(403) == 17
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert len([c for c in view["certificates"] if c["profile"] == "client"]) == 3
    # Revoking one frees its place in the roster.
    issued = next(c for c in view["certificates"] if c["profile"] == "client")
    await client.server.app[appkeys.AUTHORITY].revoke(token, issued["serial"])
    assert (
        await enroll(client, token, "late", csr(tmp_path, "late"), profile="client")
    ).status == 200
