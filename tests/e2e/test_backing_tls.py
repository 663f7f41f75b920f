"""discoverd on a backing etcd secured as in production: a real 3-member etcd 3.5 cluster with
TLS on client and peer URLs, client-certificate auth and RBAC, discoverd's user holding
readwrite on /discoverd/ only.

Discovery, DNS and the cluster CA work through it; losing the member discoverd talks to in the
middle of a bootstrap loses nothing (discoverd fails over, its watch too); and each wrong piece
of configuration gives a /health 503 whose reason names it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.e2e.conftest import (
    MEMBER_READY_TIMEOUT,
    Members,
    StartDiscoverd,
    assert_cluster,
    metric,
    registrations,
    wait_for,
    wait_registered,
)
from tests.store.secure_etcd import OUTSIDER, PASSWORD, USER, Pki, SecureCluster, secured_etcd
from tests.support import DiscoverdProcess, http

pytestmark = pytest.mark.e2e

MISCONFIGURED_TIMEOUT = 45.0  # discoverd waits 10 s for a first sync before it listens


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    with secured_etcd(tmp_path_factory.mktemp("backing-tls"), size=3) as cluster:
        yield cluster


def tls_flags(
    pki: Pki, *, cacert: Path | None = None, client: str | None = "client", user: str = USER,
    password: str = PASSWORD, workdir: Path,
) -> list[str]:  # fmt: skip
    secret = workdir / f"password-{user}-{len(password)}"
    secret.write_text(password + "\n")
    flags = ["--etcd-cacert", str(cacert or pki.ca), "--etcd-user", user]
    flags += ["--etcd-password-file", str(secret)]
    if client:
        flags += ["--etcd-cert", str(pki.cert(client)), "--etcd-key", str(pki.key(client))]
    return flags


def health(server: DiscoverdProcess) -> tuple[int, dict[str, object]]:
    try:
        status, _, body = http("GET", server.url + "/health", timeout=5)
    except OSError:
        return 0, {}
    return status, json.loads(body)


def srv_targets(server: DiscoverdProcess, name: str) -> list[int]:
    query = dns.message.make_query(name, dns.rdatatype.SRV)
    answer = dns.query.udp(query, "127.0.0.1", port=server.dns_port, timeout=3)
    return sorted(item.port for rrset in answer.answer for item in rrset)


def test_bootstrap_through_a_tls_rbac_etcd_survives_losing_its_member(
    secure: SecureCluster, start_discoverd: StartDiscoverd, members: Members, tmp_path: Path
) -> None:
    server = start_discoverd(secure.endpoints, *tls_flags(secure.pki, workdir=tmp_path))
    status, body = health(server)
    assert status == 200, body
    talking_to = body["etcd"]["endpoint"]  # type: ignore[index]
    assert talking_to in secure.endpoints, body

    url = server.new(size=3)
    token = url.rsplit("/", 1)[1]
    m1, m2 = members.start(url, names=("m1", "m2"))
    wait_registered(url, 2)  # their v2 PUTs, read back with a v2 GET
    wait_for(
        lambda: metric(server, "discoverd_waits_in_flight") == 2,
        30,
        "m1 and m2 to wait for the rest of the cluster (through the watch)",
        lambda: f"{m1.log()}\n{server.log()}",
    )

    victim = next(m for m in secure.members if m.client_url == talking_to)
    victim.stop(signal.SIGKILL)

    def failed_over() -> bool:
        code, answer = health(server)
        return code == 200 and answer["etcd"]["endpoint"] != talking_to  # type: ignore[index]

    wait_for(failed_over, 20, "discoverd to fail over to another member", server.log)
    m3 = members.add("m3", url).start()
    assert_cluster([m1, m2, m3], timeout=MEMBER_READY_TIMEOUT)
    names = sorted(str(node["value"]).split("=", 1)[0] for node in registrations(url))
    assert names == ["m1", "m2", "m3"]  # nothing lost, nothing twice

    status, _, body = http("GET", f"{server.url}/api/v1/clusters/{token}")
    assert status == 200, body
    srv = next(name for name in json.loads(body)["dns"]["srv"] if "_etcd-server._tcp." in name)
    assert srv_targets(server, srv) == sorted(m.peer_port for m in (m1, m2, m3))

    status, _, pem = http("GET", f"{server.url}/api/v1/clusters/{token}/ca.pem")
    assert status == 200 and pem.startswith(b"-----BEGIN CERTIFICATE-----"), (status, pem)

    victim.start(secure.initial_cluster)  # the module's cluster whole again, for what follows
    secure.wait_healthy([victim])


# (id, flags beyond the endpoints, words the /health reason must contain)
def misconfigurations(pki: Pki, workdir: Path) -> dict[str, tuple[list[str], list[str]]]:
    return {
        "unknown-ca": (
            tls_flags(pki, cacert=pki.other_ca, workdir=workdir),
            ["certificate verify failed", "--etcd-cacert"],
        ),
        "no-client-cert": (
            tls_flags(pki, client=None, workdir=workdir),
            ["requires a client certificate", "--etcd-cert"],
        ),
        "untrusted-client-cert": (
            tls_flags(pki, client="rogue", workdir=workdir),
            ["rejected discoverd's client certificate", "--etcd-cert"],
        ),
        "wrong-password": (
            tls_flags(pki, password="not-the-password", workdir=workdir),
            ["invalid user ID or password", "--etcd-password"],
        ),
        "no-permission": (
            tls_flags(pki, user=OUTSIDER, workdir=workdir),
            ["permission denied", f"'{OUTSIDER}'", "/discoverd/"],
        ),
    }


def wait_named(server: DiscoverdProcess, case: str, words: list[str]) -> None:
    """Wait for /health to answer 503 with a reason that holds every one of `words`."""
    last: list[object] = [None]

    def named() -> bool:
        assert server.process is not None and server.process.poll() is None, server.log()
        code, answer = health(server)
        last[0] = (code, answer)
        reason = str(answer.get("reason", ""))
        return code == 503 and all(word in reason for word in words)

    wait_for(
        named,
        MISCONFIGURED_TIMEOUT,
        f"{case}: a 503 naming {words}",
        lambda: f"{last[0]}\n{server.log()}",
        0.2,
    )


def test_each_misconfiguration_is_named_by_health(secure: SecureCluster, tmp_path: Path) -> None:
    cases = misconfigurations(secure.pki, tmp_path)
    servers = {
        case: DiscoverdProcess(tmp_path, secure.endpoints, *flags).launch()
        for case, (flags, _) in cases.items()
    }  # all at once: each waits up to 10 s for a first sync that cannot come
    try:
        for case, server in servers.items():
            words = cases[case][1]
            wait_named(server, case, words)
            log = server.log()
            assert words[0] in log, log  # the log names it too
            assert PASSWORD not in log and "not-the-password" not in log, log
    finally:
        for server in servers.values():
            server.stop()
