"""A real etcd 3.5.1 cluster secured end to end with certificates from discoverd's cluster CA.

Three members, each on its own loopback address, bootstrap through `--discovery` with https
peer AND client URLs, mutual TLS on both listeners (`--peer-client-cert-auth`,
`--client-cert-auth`) and the cluster's CA (`GET /api/v1/clusters/<token>/ca.pem`) as their
only trust anchor. Every key is made here with openssl; only CSRs travel to discoverd. Then a
client certificate from ANOTHER cluster's CA is refused at the handshake, and a client
certificate revoked with `discoverd cert revoke` is refused once the members' `--client-crl-file`
holds the CRL that discoverd serves.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.conftest import (
    EtcdMember,
    Members,
    StartDiscoverd,
    distro_etcd,
    registrations,
    wait_for,
    wait_healthy,
)
from tests.support import DiscoverdProcess, http, wait_until

pytestmark = pytest.mark.e2e

NAMES = ("m1", "m2", "m3")
ETCDCTL_TIMEOUT = 30.0  # a hard stop for one etcdctl run; its own timeouts are far shorter
# etcdctl retries a refused connection until its command timeout (5 s by default) expires: a
# refusal is certain after the first attempt, so give up sooner.
REFUSED_TIMEOUT = "2s"
LOG_TIMEOUT = 5.0


# -- certificates from discoverd ---------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate discoverd issued, and the key that was made here for it."""

    name: str
    profile: str
    cert: Path
    key: Path
    serial: str


def _post_json(url: str, payload: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Enroller:
    """One discovery token of a discoverd: its CA, its CRL, and certificates enrolled with it."""

    def __init__(self, server: DiscoverdProcess, directory: Path) -> None:
        self.server = server
        self.url = server.new(size=len(NAMES))
        self.token = self.url.rsplit("/", 1)[1]
        self.directory = directory
        directory.mkdir(parents=True)
        self.ca = directory / "ca.pem"
        self.ca.write_text(self._get("ca.pem"))

    def _get(self, what: str) -> str:
        status, _, body = http("GET", f"{self.server.url}/api/v1/clusters/{self.token}/{what}")
        assert status == 200, body
        return body.decode()

    def crl(self) -> str:
        return self._get("crl.pem")

    def issue(self, name: str, profile: str, ip: str | None = None) -> Issued:
        """Make a P-256 key and a CSR (SAN = `ip`) here, have discoverd sign the CSR."""
        key = self.directory / f"{name}-{profile}-key.pem"
        san = ["-addext", f"subjectAltName=IP:{ip}"] if ip else []
        made = subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-subj", f"/CN={name}", *san],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        status, body = _post_json(
            f"{self.server.url}/api/v1/certs",
            {"token": self.token, "name": name, "csr": made.stdout, "profile": profile},
        )
        assert status == 200, body
        assert body["ca"] == self.ca.read_text()
        cert = self.directory / f"{name}-{profile}.pem"
        cert.write_text(str(body["certificate"]))
        issued = x509.load_pem_x509_certificate(cert.read_bytes())
        assert format(issued.serial_number, "x") == body["serial"]
        if ip:  # the member's address, on top of the loopback names every peer/server gets
            sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert ip in {str(addr) for addr in sans.get_values_for_type(x509.IPAddress)}
        return Issued(name, profile, cert, key, str(body["serial"]))


def revoked_serials(crl_pem: str) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(crl_pem.encode())}


def write_atomically(path: Path, text: str) -> None:
    """etcd reads the CRL file while it serves: it must never see half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# -- members with TLS everywhere ----------------------------------------------------------------


class TlsMember(EtcdMember):
    """An `EtcdMember` with https peer and client URLs and mutual TLS on both listeners."""

    def __init__(
        self,
        name: str,
        host: str,
        discovery: str,
        workdir: Path,
        *,
        ca: Path,
        peer: Issued,
        server: Issued,
        crl: Path,
        probe: Issued,
    ) -> None:
        tls = [
            "--client-cert-auth",
            f"--trusted-ca-file={ca}",
            f"--cert-file={server.cert}",
            f"--key-file={server.key}",
            f"--client-crl-file={crl}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={ca}",
            f"--peer-cert-file={peer.cert}",
            f"--peer-key-file={peer.key}",
        ]
        super().__init__(name, host, discovery, workdir, distro_etcd(), tls)
        # /health sits behind --client-cert-auth too: probe it with a client certificate.
        self.probe = ssl.create_default_context(cafile=str(ca))
        self.probe.load_cert_chain(str(probe.cert), str(probe.key))

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    def healthy(self) -> bool:
        assert self.process is not None, f"{self} was never started"
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self} exited with status {self.process.returncode}:\n{self.log()}"
            )
        url = f"{self.client_url}/health"
        try:
            with urllib.request.urlopen(url, timeout=1, context=self.probe) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return False


@dataclass
class TlsCluster:
    server: DiscoverdProcess
    pki: Enroller
    group: list[TlsMember]
    crl: Path  # every member's --client-crl-file
    root: Issued  # a client certificate of the cluster's CA

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.group]


@pytest.fixture
def tls_cluster(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members, tmp_path: Path
) -> TlsCluster:
    server = start_discoverd([etcd_endpoint])
    pki = Enroller(server, tmp_path / "pki")
    crl = tmp_path / "crl.pem"
    # Nothing is revoked yet, but the file must exist and parse: etcd fails closed, refusing
    # every client that presents a certificate when it cannot read its --client-crl-file.
    write_atomically(crl, pki.crl())
    root = pki.issue("admin", "client")  # (etcd's root needs a cluster made with /new?root=1)
    group = []
    for name in NAMES:
        host = members.loopback.next_host()  # this test's own 127.0.N.0/24, checked bindable
        member = TlsMember(
            name,
            host,
            pki.url,
            tmp_path,
            ca=pki.ca,
            peer=pki.issue(name, "peer", host),
            server=pki.issue(name, "server", host),
            crl=crl,
            probe=root,
        )
        members.all.append(member)  # the `members` fixture kills it by pid at teardown
        group.append(member)
    for member in group:
        member.start()
    wait_healthy(group)
    return TlsCluster(server, pki, group, crl, root)


# -- etcdctl -----------------------------------------------------------------------------------


def etcdctl(
    ca: Path,
    client: Issued,
    endpoints: Sequence[str],
    *args: str,
    timeout: str = "5s",
) -> subprocess.CompletedProcess[str]:
    binary = distro_etcd()
    env = binary.env()
    env["ETCDCTL_API"] = "3"
    return subprocess.run(
        [
            str(binary.etcdctl),
            f"--endpoints={','.join(endpoints)}",
            f"--cacert={ca}",
            f"--cert={client.cert}",
            f"--key={client.key}",
            f"--dial-timeout={timeout}",
            f"--command-timeout={timeout}",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=ETCDCTL_TIMEOUT,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def assert_works(cluster: TlsCluster, client: Issued, member: TlsMember) -> None:
    result = etcdctl(cluster.pki.ca, client, [member.client_url], "get", "greeting")
    assert result.returncode == 0, f"{client.name} on {member}: {output(result)}"


# -- the tests ---------------------------------------------------------------------------------


def test_tls_cluster_bootstraps_with_certificates_from_discoverd(tls_cluster: TlsCluster) -> None:
    cluster = tls_cluster
    assert sorted(str(node["value"]) for node in registrations(cluster.pki.url)) == [
        f"{member.name}={member.peer_url}" for member in cluster.group
    ]

    listed = etcdctl(
        cluster.pki.ca, cluster.root, cluster.endpoints, "member", "list", "--write-out=json"
    )
    assert listed.returncode == 0, output(listed)
    found = {
        m["name"]: (m["peerURLs"], m["clientURLs"]) for m in json.loads(listed.stdout)["members"]
    }
    assert found == {m.name: ([m.peer_url], [m.client_url]) for m in cluster.group}

    first, *_, last = cluster.group
    put = etcdctl(cluster.pki.ca, cluster.root, [first.client_url], "put", "greeting", "hello")
    assert put.returncode == 0 and put.stdout.strip() == "OK", output(put)
    got = etcdctl(
        cluster.pki.ca, cluster.root, [last.client_url], "get", "greeting", "--print-value-only"
    )
    assert got.returncode == 0 and got.stdout.strip() == "hello", output(got)


def test_client_certificate_of_another_cluster_is_refused(
    tls_cluster: TlsCluster, tmp_path: Path
) -> None:
    cluster = tls_cluster
    other = Enroller(cluster.server, tmp_path / "other-pki")
    assert other.ca.read_text() != cluster.pki.ca.read_text()
    stranger = other.issue("admin", "client")  # the same name, but another cluster's CA

    refused = etcdctl(
        cluster.pki.ca, stranger, cluster.endpoints, "get", "greeting",
        timeout=REFUSED_TIMEOUT,
    )  # fmt: skip
    assert refused.returncode != 0, output(refused)
    assert "tls: bad certificate" in refused.stderr, output(refused)
    wait_for(
        lambda: any("certificate signed by unknown authority" in m.log() for m in cluster.group),
        LOG_TIMEOUT,
        "a member to log why it refused the stranger",
        lambda: "\n".join(m.log() for m in cluster.group),
    )
    assert_works(cluster, cluster.root, cluster.group[0])


def test_revoked_client_certificate_is_refused(tls_cluster: TlsCluster, etcd_endpoint: str) -> None:
    """etcd 3.5.1 re-reads --client-crl-file on EVERY new client connection
    (client/pkg/transport/listener_tls.go, checkCRL: "TODO: cache"), after the handshake, and
    closes connections that present a listed serial. So refreshing the file is enough: no
    restart. The test still restarts one member afterwards, to show that the revocation also
    holds for a member that reads the file at start (as a later etcd that caches it would)."""
    cluster = tls_cluster
    alice = cluster.pki.issue("alice", "client")
    for member in cluster.group:
        assert_works(cluster, alice, member)

    revoke = subprocess.run(
        [sys.executable, "-m", "discoverd", "cert", "revoke", "--token", cluster.pki.token,
         "--serial", alice.serial, "--etcd", etcd_endpoint],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert revoke.returncode == 0, output(revoke)
    assert f"revoked {alice.serial} (alice, client)" in revoke.stdout, output(revoke)

    # The CLI writes to etcd; discoverd serves the CRL from its watch of etcd, a moment later.
    crl = [""]

    def crl_lists_alice() -> bool:
        crl[0] = cluster.pki.crl()
        return int(alice.serial, 16) in revoked_serials(crl[0])

    wait_until(crl_lists_alice, 10, f"discoverd's CRL to list serial {alice.serial}")
    assert int(cluster.root.serial, 16) not in revoked_serials(crl[0])
    write_atomically(cluster.crl, crl[0])

    def assert_refused(member: TlsMember) -> None:
        refused = etcdctl(
            cluster.pki.ca, alice, [member.client_url], "get", "greeting",
            timeout=REFUSED_TIMEOUT,
        )  # fmt: skip
        assert refused.returncode != 0, f"{member}: {output(refused)}"
        # The handshake itself succeeds (the chain is fine); etcd then closes the connection,
        # so etcdctl only sees it drop. The member's log says why.
        wait_for(
            lambda: f"transport: certificate serial {alice.serial} revoked" in member.log(),
            LOG_TIMEOUT,
            f"{member} to log that it refused the revoked certificate",
            lambda: f"{output(refused)}\n{member.log()}",
        )
        assert_works(cluster, cluster.root, member)

    for member in cluster.group:
        assert_refused(member)

    restarted = cluster.group[-1]
    restarted.stop()
    restarted.start()
    wait_healthy([restarted])
    assert_refused(restarted)
