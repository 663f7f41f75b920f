"""`discoverd join`: what a new node runs (from cloud-init) before it starts etcd.

    0. in discovery mode, find the version of the node's etcd (`etcd --version`, or
       --etcd-version): etcd >= 3.6 gets v3 discovery (ETCD_DISCOVERY_TOKEN and
       ETCD_DISCOVERY_ENDPOINTS, gRPC), etcd <= 3.5 the v2 URL (ETCD_DISCOVERY). etcd 3.7 has
       no v2 discovery and only warns about ETCD_DISCOVERY in its environment, then boots as a
       fresh one-node cluster: a join that cannot tell the version refuses to write anything;
    1. read the cluster (size, domains, discovery URL); refuse a full cluster;
    2. with --tls: fetch the cluster CA (checked against --ca-sha256), make keys here, enroll
       peer, server and client certificates (the keys never leave the node);
    3. register the member's peer and client URLs (DNS, status);
    4. in srv mode, wait until `size` members have registered;
    5. write OUT/etcd.env: the ETCD_* variables the stock etcd reads by itself, and
       OUT/etcdctl.env for local tools.

Every file is written atomically, keys with mode 0600. A node that already joined (same
token, name, address and mode) changes nothing and exits 0, so cloud-init re-runs and reboots
are harmless. Failures are one line on stderr and a non-zero exit; every retry of an
unreachable server is one line with its reason.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from discoverd.api_client import ApiClient, ApiError, check_server
from discoverd.certs import x509
from discoverd.certs.offline import write_private, write_public

MARKER = "join.json"
DISCOVERY_CA = "discovery-ca.pem"  # the copy of --discovery-cacert that etcd reads
POLL = 1.0
VERSION_TIMEOUT = 30.0  # `etcd --version` on a loaded machine
V3_DISCOVERY = (3, 6)  # the first etcd with v3 discovery; 3.7 has nothing else
VERSION_RE = re.compile(r"^etcd Version: (\d+)\.(\d+)\.(\d+)", re.MULTILINE)
GIVEN_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?")
# What identifies a join in OUT/join.json: a re-run with the same values is the same join.
IDENTITY = (
    "server", "token", "name", "ip", "mode", "tls", "out", "data_dir", "peer_port",
    "client_port",
)  # fmt: skip

Version = tuple[int, int]


@dataclass(frozen=True)
class JoinRequest:
    server: str
    token: str
    name: str
    ip: str
    mode: str  # "discovery" or "srv"
    tls: bool
    out: str
    data_dir: str = "/var/lib/etcd"
    peer_port: int = 2380
    client_port: int = 2379
    ca_sha256: str | None = None
    etcd_binary: str = "etcd"  # asked for its version in discovery mode
    etcd_version: str | None = None  # X.Y[.Z]: not asked
    discovery_cacert: str | None = None  # CA of a TLS v3 discovery endpoint (etcd >= 3.6)
    local_client: bool = True  # etcd also listens for clients on 127.0.0.1

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, port: int, ip: str | None = None) -> str:
        host = ip or self.ip
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{port}"


class JoinError(Exception):
    """One line that says what went wrong and what to do."""


def join(request: JoinRequest, timeout: float, say: Any = print) -> str:
    """Join the cluster; a short summary of what was done."""
    out = Path(request.out).absolute()  # etcd.env names files in it: never relative
    request = replace(request, out=str(out))
    _check(request)
    if _already_joined(out, request):
        return f"{request.name} already joined; {out / 'etcd.env'} is unchanged"
    version = etcd_version(request) if request.mode == "discovery" else None
    if version is not None:
        say(f"etcd {version[0]}.{version[1]}: {_discovery_kind(version)}")
    try:
        client = ApiClient(request.server, time.monotonic() + timeout, say=say)
        cluster = client.cluster(request.token)
        if version is not None and version >= V3_DISCOVERY:
            _check_v3(cluster, version)
        members = {m["name"] for m in cluster["members"]}
        if request.name not in members and len(members) >= cluster["size"]:
            raise JoinError(
                f"cluster is full: {len(members)} of {cluster['size']} members registered "
                f"({', '.join(sorted(members))}); this node needs a new token"
            )
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        if request.tls:
            _certificates(client, request, cluster, out, say)
        client.send_json(
            "PUT",
            f"/api/v1/clusters/{request.token}/members/{request.name}",
            {
                "peer_urls": [request.url(request.peer_port)],
                "client_urls": [request.url(request.client_port)],
            },
        )
        say(f"registered {request.name} at {request.url(request.peer_port)}")
        if request.mode == "srv":
            _wait_for_members(client, request, cluster["size"], say)
    except ApiError as exc:
        raise JoinError(str(exc)) from None
    if version is not None and version >= V3_DISCOVERY and request.discovery_cacert:
        if cluster["discovery_v3"]["tls"]:
            write_public(out / DISCOVERY_CA, Path(request.discovery_cacert).read_text())
        else:
            say("--discovery-cacert is not used: the server's v3 discovery is plaintext")
    # etcd.env and the marker carry the token (ETCD_DISCOVERY*): only the owner reads them.
    write_private(out / "etcd.env", render_env(request, cluster, out, version))
    write_private(out / "etcdctl.env", render_etcdctl_env(request, out))
    write_private(out / MARKER, json.dumps(_marker(request), indent=1) + "\n")
    return f"{request.name} joined; start etcd with EnvironmentFile={out / 'etcd.env'}"


def _check(request: JoinRequest) -> None:
    try:
        check_server(request.server)
    except ApiError as exc:
        raise JoinError(str(exc)) from None
    if request.mode not in ("discovery", "srv"):
        raise JoinError("--mode must be discovery or srv")
    try:
        ipaddress.ip_address(request.ip)
    except ValueError:
        raise JoinError(f"--ip {request.ip!r} is not an IP address") from None
    if request.ca_sha256 and not request.tls:
        raise JoinError("--ca-sha256 pins the CA of a TLS cluster: add --tls")
    if request.discovery_cacert and not Path(request.discovery_cacert).is_file():
        raise JoinError(f"--discovery-cacert {request.discovery_cacert}: no such file")


def etcd_version(request: JoinRequest) -> Version:
    """(major, minor) of the etcd this node will run: --etcd-version, or `etcd --version`."""
    if request.etcd_version is not None:
        given = GIVEN_VERSION_RE.fullmatch(request.etcd_version.strip())
        if not given:
            raise JoinError(f"--etcd-version {request.etcd_version!r} is not X.Y or X.Y.Z")
        return int(given.group(1)), int(given.group(2))
    binary = shutil.which(request.etcd_binary)
    if binary is None:
        return _unknown_version(f"no {request.etcd_binary} executable")
    try:
        run = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return _unknown_version(f"`{binary} --version` did not answer in {VERSION_TIMEOUT:.0f}s")
    except OSError as exc:
        return _unknown_version(f"cannot run {binary}: {exc.strerror or exc}")
    found = VERSION_RE.search(run.stdout)
    if run.returncode != 0 or not found:
        said = (run.stdout + run.stderr).strip().splitlines()[:1] or ["nothing"]
        return _unknown_version(
            f"`{binary} --version` exited {run.returncode} and said {said[0][:120]!r}"
        )
    return int(found.group(1)), int(found.group(2))


def _unknown_version(why: str) -> Version:
    raise JoinError(f"cannot tell the etcd version: {why}; pass --etcd-version")


def _discovery_kind(version: Version) -> str:
    if version >= V3_DISCOVERY:
        return "v3 discovery (ETCD_DISCOVERY_TOKEN, ETCD_DISCOVERY_ENDPOINTS)"
    return "v2 discovery (ETCD_DISCOVERY)"


def _check_v3(cluster: dict[str, Any], version: Version) -> None:
    v3 = cluster.get("discovery_v3") or {}
    if not v3.get("endpoints"):
        raise JoinError(
            f"etcd {version[0]}.{version[1]} needs v3 discovery, which this server does not "
            "offer (no discovery_v3 endpoints in its cluster view); use --mode srv"
        )


def _marker(request: JoinRequest) -> dict[str, Any]:
    return {field: getattr(request, field) for field in IDENTITY}


def _already_joined(out: Path, request: JoinRequest) -> bool:
    marker = out / MARKER
    if not marker.exists():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    if recorded != _marker(request):
        raise JoinError(
            f"{out} holds the join of another cluster or address ({recorded.get('name')} in "
            f"token {str(recorded.get('token'))[:6]}…); remove it to join again"
        )
    return (out / "etcd.env").exists()


def _certificates(
    client: ApiClient, request: JoinRequest, cluster: dict[str, Any], out: Path, say: Any
) -> None:
    ca_pem = client.get_text(f"/api/v1/clusters/{request.token}/ca.pem")
    ca = x509.load_cert(ca_pem)
    got = x509.fingerprint(ca)
    if request.ca_sha256:
        wanted = request.ca_sha256.replace(":", "").lower()
        if got != wanted:
            raise JoinError(f"the server's CA has sha256 {got}, not {wanted}: refusing to trust it")
    write_public(out / "ca.pem", ca_pem)
    # A named cluster's certificates name only <name>.<zone>: SANs are shown to everyone who
    # connects to a member, and the token is a secret.
    domains = cluster["dns"]["domains"][1:] if cluster.get("name") else cluster["dns"]["domains"]
    names = [*(f"{request.name}.{domain}" for domain in domains), *domains]
    ip = ipaddress.ip_address(request.ip)
    for profile, sans in (("peer", (names, [ip])), ("server", (names, [ip])), ("client", ([], []))):
        _enroll(client, request, profile=profile, sans=sans, ca=ca, out=out)
        say(f"{profile} certificate ready")


def _enroll(
    client: ApiClient,
    request: JoinRequest,
    *,
    profile: str,
    sans: tuple[list[str], list[Any]],
    ca: cx509.Certificate,
    out: Path,
) -> None:
    cert_path, key_path = out / f"{profile}.pem", out / f"{profile}-key.pem"
    if cert_path.exists() and key_path.exists() and _issued_by(cert_path, ca):
        return  # a re-run after a partial failure: the certificate is already here
    key = x509.new_key()
    builder = cx509.CertificateSigningRequestBuilder().subject_name(
        cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, request.name)])
    )
    dns, ips = sans
    if dns or ips:
        alt = [cx509.DNSName(n) for n in dns] + [cx509.IPAddress(i) for i in ips]
        builder = builder.add_extension(cx509.SubjectAlternativeName(alt), critical=False)
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    body = {"token": request.token, "name": request.name, "csr": csr, "profile": profile}
    try:
        issued = client.send_json("POST", "/api/v1/certs", body)
    except ApiError as exc:
        if exc.status == 409:
            raise JoinError(
                f"{request.name} already has a {profile} certificate but its files are not in "
                f"{out}; an operator can free the name with `discoverd cert revoke --token … "
                f"--name {request.name}`"
            ) from None
        raise
    write_private(key_path, x509.key_pem(key))
    write_public(cert_path, issued["certificate"])


def _issued_by(cert_path: Path, ca: cx509.Certificate) -> bool:
    try:
        return x509.load_cert(cert_path.read_text()).issuer == ca.subject
    except (OSError, ValueError):
        return False


def _wait_for_members(client: ApiClient, request: JoinRequest, size: int, say: Any) -> None:
    seen = -1
    while True:
        cluster = client.cluster(request.token)
        count = len(cluster["members"])
        if count != seen:
            say(f"{count} of {size} members registered")
            seen = count
        if count >= size:
            return
        if time.monotonic() + POLL > client.deadline:
            raise JoinError(f"timed out waiting for members: {count} of {size} registered")
        time.sleep(POLL)


def render_env(
    request: JoinRequest, cluster: dict[str, Any], out: Path, version: Version | None
) -> str:
    """The ETCD_* variables of this member, read by the stock etcd (of `version`, needed in
    discovery mode) from its environment."""
    peer = request.url(request.peer_port)
    listen = [request.url(request.client_port)]
    local = request.url(request.client_port, "127.0.0.1")
    if request.local_client and local not in listen:
        listen.append(local)
    env = {
        "ETCD_NAME": request.name,
        "ETCD_DATA_DIR": request.data_dir,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen),
        "ETCD_ADVERTISE_CLIENT_URLS": request.url(request.client_port),
        # 3.4 to 3.7.1 all read it (3.7.1 logs "recognized and used environment variable")
        "ETCD_DISCOVERY_FALLBACK": "exit",
    }
    if platform.machine() in ("aarch64", "arm64"):
        env["ETCD_UNSUPPORTED_ARCH"] = "arm64"  # etcd 3.4 refuses to start on arm64 without it
    if request.mode == "discovery":
        if version is None:
            raise ValueError("discovery mode needs the etcd version")
        env |= discovery_env(
            cluster, version, out / DISCOVERY_CA if request.discovery_cacert else None
        )
    else:
        env["ETCD_DISCOVERY_SRV"] = cluster["dns"]["domains"][-1]  # <name>.<zone> if named
        env["ETCD_INITIAL_CLUSTER_TOKEN"] = request.token
    if request.tls:
        env |= {
            "ETCD_TRUSTED_CA_FILE": str(out / "ca.pem"),
            "ETCD_CERT_FILE": str(out / "server.pem"),
            "ETCD_KEY_FILE": str(out / "server-key.pem"),
            "ETCD_CLIENT_CERT_AUTH": "true",
            "ETCD_PEER_TRUSTED_CA_FILE": str(out / "ca.pem"),
            "ETCD_PEER_CERT_FILE": str(out / "peer.pem"),
            "ETCD_PEER_KEY_FILE": str(out / "peer-key.pem"),
            "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        }
    return "".join(f"{key}={value}\n" for key, value in env.items())


def discovery_env(cluster: dict[str, Any], version: Version, cacert: Path | None) -> dict[str, str]:
    """How an etcd of `version` finds this cluster: v3 discovery from 3.6 on (3.7 knows nothing
    else), the v2 URL before; never both (3.6 would log a deprecation, 3.7 ignore it)."""
    if version < V3_DISCOVERY:
        return {"ETCD_DISCOVERY": cluster["discovery_url"]}
    v3 = cluster["discovery_v3"]
    scheme = "https://" if v3["tls"] else ""  # https:// turns TLS on; bare host:port is plaintext
    env = {
        "ETCD_DISCOVERY_TOKEN": v3["token"],
        "ETCD_DISCOVERY_ENDPOINTS": ",".join(scheme + endpoint for endpoint in v3["endpoints"]),
    }
    if v3["tls"]:  # TLS only, never a plaintext fallback; system roots unless a CA is given
        env["ETCD_DISCOVERY_INSECURE_TRANSPORT"] = "false"
        if cacert is not None:
            env["ETCD_DISCOVERY_CACERT"] = str(cacert)
    return env


def render_etcdctl_env(request: JoinRequest, out: Path) -> str:
    env = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": request.url(request.client_port)}
    if request.tls:
        env |= {
            "ETCDCTL_CACERT": str(out / "ca.pem"),
            "ETCDCTL_CERT": str(out / "client.pem"),
            "ETCDCTL_KEY": str(out / "client-key.pem"),
        }
    return "".join(f"{key}={value}\n" for key, value in env.items())
