"""`discoverd status` tells what etcd itself did, with real etcd 3.5.1 members and a real
`discoverd serve` process: in discovery mode etcd's own registrations (not `join`'s member API
records), in srv mode the members' health through their client URLs, over TLS with the cluster
CA and a client certificate discoverd issued."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd.cli import main
from discoverd.clusters.health import check
from tests.e2e.conftest import Members, wait_registered
from tests.store.secure_etcd import Pki, SecureCluster
from tests.support import DiscoverdProcess, http, wait_until

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 60.0


class _Loopback:
    """Every member on 127.0.0.1 (free ports tell them apart)."""

    @staticmethod
    def next_host() -> str:
        return "127.0.0.1"


@pytest.fixture
def discoverd(tmp_path: Path, etcd_endpoint: str) -> Iterator[DiscoverdProcess]:
    process = DiscoverdProcess(tmp_path, [etcd_endpoint])
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    group = Members(tmp_path, _Loopback())  # type: ignore[arg-type]
    try:
        yield group
    finally:
        group.kill_all()


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line


def join(server: DiscoverdProcess, token: str, name: str, peer: str, client: str) -> None:
    """What `discoverd join` registers for a node, before its etcd starts."""
    body = json.dumps({"peer_urls": [peer], "client_urls": [client]}).encode()
    request = urllib.request.Request(
        f"{server.url}/api/v1/clusters/{token}/members/{name}", data=body, method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, list[str]], str]:
    """Exit status, the table's rows by member name (member, joined, etcd registered, health,
    peer URLs, certificates) and stderr."""
    code = main(["status", *argv])
    out, err = capsys.readouterr()
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if len(cells) == 6 and cells[0] != "member":
            rows[cells[0]] = cells
    return code, rows, err


def test_discovery_mode_counts_what_etcd_registered(discoverd, members, capsys):
    """The bug: 3 member API records, 2 etcds up, and status said '3 of 3 members'."""
    url = discoverd.new(size=3)
    token = url.rsplit("/", 1)[1]
    nodes = [members.add(name, url) for name in ("m1", "m2", "m3")]
    for node in nodes:
        join(discoverd, token, node.name, node.peer_url, node.client_url)
    for node in nodes[:2]:  # m3's etcd crashed before it registered
        node.start()
    wait_registered(url, 2, READY_TIMEOUT)

    code, rows, err = status(capsys, url)
    assert code == 1, err
    assert err.strip() == (
        "incomplete: 2 of 3 members registered by etcd itself (discovery); "
        "3 of 3 joined (member API)"
    )
    assert [rows[name][:4] for name in ("m1", "m2", "m3")] == [
        ["m1", "yes", "v2", "-"],
        ["m2", "yes", "v2", "-"],
        ["m3", "yes", "no", "-"],
    ]
    # --wait does not take join's records for etcd's either
    code, _, err = status(capsys, url, "--wait", "--timeout", "2s")
    assert code == 1 and "timed out after 2s" in err and "2 of 3 members registered" in err

    nodes[2].start()  # once the third etcd registers, --wait completes
    code, rows, err = status(capsys, url, "--wait", "--timeout", f"{READY_TIMEOUT:g}s")
    assert code == 0, err
    assert [rows[name][2] for name in ("m1", "m2", "m3")] == ["v2", "v2", "v2"]


def enroll(server: DiscoverdProcess, token: str, name: str, profile: str, pki: Path) -> None:
    """A key made here, a certificate from the cluster CA: `<pki>/<name>.pem`, `-key.pem`."""
    key = pki / f"{name}-key.pem"
    made = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-subj", f"/CN={name}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    body = {"token": token, "name": name, "csr": made.stdout, "profile": profile}
    code, _, answer = http("POST", f"{server.url}/api/v1/certs", json.dumps(body).encode())
    assert code == 200, answer
    (pki / f"{name}.pem").write_text(json.loads(answer)["certificate"])


@pytest.fixture
def tls_cluster(discoverd, tmp_path) -> Iterator[tuple[str, SecureCluster]]:
    """A token, and 3 real etcd members (static bootstrap: srv mode has no discovery
    registration) with TLS client and peer URLs and --client-cert-auth, whose certificates
    all come from that token's cluster CA; each registered through the member API."""
    url = discoverd.new(size=3)
    token = url.rsplit("/", 1)[1]
    pki = tmp_path / "pki"
    pki.mkdir()
    code, _, ca = http("GET", f"{discoverd.url}/api/v1/clusters/{token}/ca.pem")
    assert code == 200, ca
    (pki / "ca.pem").write_bytes(ca)
    enroll(discoverd, token, "server", "peer", pki)  # SANs: 127.0.0.1, as every peer's
    enroll(discoverd, token, "client", "client", pki)
    (tmp_path / "etcd").mkdir()
    cluster = SecureCluster(tmp_path / "etcd", Pki(pki), size=3)
    try:
        cluster.start()
        for member in cluster.members:
            join(discoverd, token, member.name, member.peer_url, member.client_url)
        yield url, cluster
    finally:
        cluster.stop()


def test_srv_mode_checks_the_members_health(tls_cluster, tmp_path, capsys):
    url, cluster = tls_cluster
    pki = tmp_path / "pki"
    identity = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client-key.pem")]

    code, rows, err = status(capsys, url)  # https client URLs, no client certificate
    assert code == 1
    assert err.startswith("cannot verify: 0 of 3 members healthy (srv mode"), err
    assert err.strip().endswith("3 not checked (TLS: pass --cert/--key)"), err
    assert {rows[m.name][3] for m in cluster.members} == {"not checked (TLS: pass --cert/--key)"}
    code, _, err = status(capsys, url, "--wait", "--timeout", "60s")  # nothing to wait for
    assert code == 1 and "cannot verify" in err and "timed out" not in err

    code, rows, err = status(capsys, url, *identity)
    assert code == 0, err
    assert [rows[m.name][:4] for m in cluster.members] == [
        [m.name, "yes", "no", "healthy"] for m in cluster.members
    ]

    stopped, *live = reversed(cluster.members)
    stopped.stop(signal.SIGKILL)
    context = cluster.pki.client_context()
    wait_until(  # if it was the leader, the others elect another one first
        lambda: all(str(check([m.client_url], context)) == "healthy" for m in live),
        READY_TIMEOUT,
        "the two live members to have a leader",
        interval=0.2,
    )
    code, rows, err = status(capsys, url, *identity)
    assert code == 1, (rows, err)
    assert err.startswith("incomplete: 2 of 3 members healthy (srv mode"), (rows, err)
    assert rows[stopped.name][3] == "unhealthy: connection refused"
    assert [rows[m.name][3] for m in live] == ["healthy", "healthy"]


def test_a_member_without_a_leader_is_unhealthy_in_etcds_words(tls_cluster):
    _, cluster = tls_cluster
    for member in cluster.members[1:]:
        member.stop(signal.SIGKILL)
    alone = cluster.members[0]
    context = cluster.pki.client_context()
    wait_until(
        lambda: str(check([alone.client_url], context)).startswith(
            "unhealthy: etcd says health=false"
        ),
        READY_TIMEOUT,
        "the last member to lose its leader",
        interval=0.2,
    )
