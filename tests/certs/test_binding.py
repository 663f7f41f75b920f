"""A certificate is bound to its member's name (#7), over HTTP on a real etcd, read back with the
real openssl: no other member's names or addresses, one name whatever its case, and never etcd's
`root` unless the cluster was created for it."""

from __future__ import annotations

import os

import pytest

from discoverd.directory.rules import cluster_label as label
from tests.certs.test_handlers import csr, enroll, new_token, openssl


def sans_of(tmp_path, pem: str) -> list[str]:
    (tmp_path / "leaf.pem").write_text(pem)
    out = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-ext", "subjectAltName")
    assert out.returncode == 0, out.stderr
    return sorted(part.strip() for part in out.stdout.splitlines()[1].split(","))


def subject_of(tmp_path, pem: str) -> str:
    (tmp_path / "leaf.pem").write_text(pem)
    out = openssl(
        "x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-subject", "-nameopt", "RFC2253"
    )
    return out.stdout.strip()


async def test_a_member_gets_only_its_own_names(client, tmp_path):
    name = "bind-" + os.urandom(4).hex()
    token = await new_token(client, f"size=3&name={name}")
    domains = [f"{label(token)}.etcd.internal", f"{name}.etcd.internal"]
    evil = csr(
        tmp_path,
        "evil",
        ",".join(f"DNS:infra1.{d},DNS:infra2.{d}" for d in domains) + ",IP:10.0.0.9",
    )
    refused = await enroll(client, token, "evil", evil)
    assert refused.status == 400
    message = (await refused.json())["message"]
    assert f"'infra1.{domains[0]}' is not allowed: a certificate of evil names only" in message

    own = ",".join(f"DNS:evil.{d},DNS:{d}" for d in domains) + ",IP:10.0.0.9"
    issued = await enroll(client, token, "evil", csr(tmp_path, "evil2", own))
    assert issued.status == 200, await issued.text()
    assert sans_of(tmp_path, (await issued.json())["certificate"]) == sorted(
        [*(f"DNS:evil.{d}" for d in domains), *(f"DNS:{d}" for d in domains), "DNS:localhost",
         "IP Address:10.0.0.9", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"]
    )  # fmt: skip


async def test_another_members_address_is_refused(client, tmp_path):
    token = await new_token(client)
    assert (await enroll(client, token, "infra0", csr(tmp_path, "a", "IP:10.0.0.1"))).status == 200
    stolen = await enroll(client, token, "evil", csr(tmp_path, "e", "IP:10.0.0.1"))
    assert stolen.status == 409
    assert "a certificate of member infra0 names it" in (await stolen.json())["message"]
    own = await enroll(client, token, "infra0", csr(tmp_path, "b", "IP:10.0.0.1"), "server")
    assert own.status == 200  # the member's own second profile


async def test_names_are_one_whatever_their_case(client, tmp_path):
    token = await new_token(client)
    first = await enroll(client, token, "infra0", csr(tmp_path, "a", "IP:10.0.0.1"))
    assert first.status == 200
    upper = await enroll(client, token, "INFRA0", csr(tmp_path, "b", "IP:10.0.0.1"))
    assert upper.status == 409
    assert "infra0 already has a peer certificate" in (await upper.json())["message"]
    mixed = await enroll(client, token, "Infra1", csr(tmp_path, "c", "IP:10.0.0.2"))
    assert mixed.status == 200
    assert subject_of(tmp_path, (await mixed.json())["certificate"]) == "subject=CN=infra1"
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert sorted(c["name"] for c in view["certificates"]) == ["infra0", "infra1"]


@pytest.mark.parametrize(
    ("query", "profile", "name", "status"),
    [
        ("size=3", "client", "root", 403),
        ("size=3", "client", "ROOT", 403),
        ("size=3", "peer", "root", 403),
        ("size=3", "server", "root", 403),
        ("size=3&root=1", "peer", "root", 403),  # a member is never the superuser
        ("size=3&root=1", "client", "Root", 200),
        ("size=3&root=yes", None, None, 400),
    ],
)
async def test_root_only_where_the_cluster_allows_it(
    client, tmp_path, query, profile, name, status
):
    response = await client.post(f"/new?{query}")
    if profile is None:
        assert response.status == status
        assert "root must be 1" in (await response.json())["message"]
        return
    token = (await response.text()).rsplit("/", 1)[1]
    sans = "" if profile == "client" else "IP:10.0.0.1"
    answer = await enroll(client, token, name, csr(tmp_path, "r", sans), profile)
    assert answer.status == status, await answer.text()
    if status == 403:
        assert "root is etcd's superuser" in (await answer.json())["message"]
    else:
        assert subject_of(tmp_path, (await answer.json())["certificate"]) == "subject=CN=root"
