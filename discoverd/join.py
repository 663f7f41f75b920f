"""discoverd's join client: what a new node runs (from cloud-init) before it starts etcd.

One file, Python >= 3.8 standard library only, plus the `openssl` command for keys and CSRs:
discoverd serves this very file at GET /api/v1/join.py and `discoverd new` prints its SHA-256,
so a node needs nothing beyond a stock cloud image and the distribution's etcd. `discoverd join`
is the same code (`python3 join.py ARGS` == `discoverd join ARGS`), which is why this module
also holds the small HTTP client the operator commands use (discoverd.api_client re-exports it)
and is longer than the others: nothing here may import discoverd or anything outside the stdlib.

    0. in discovery mode, find the version of the node's etcd (`etcd --version`, or
       --etcd-version): etcd >= 3.6 gets v3 discovery (ETCD_DISCOVERY_TOKEN and
       ETCD_DISCOVERY_ENDPOINTS, gRPC), etcd <= 3.5 the v2 URL (ETCD_DISCOVERY). etcd 3.7 has
       no v2 discovery and only warns about ETCD_DISCOVERY in its environment, then boots as a
       fresh one-node cluster: a join that cannot tell the version refuses to write anything;
    1. read the cluster (size, domains, discovery URL); refuse a full cluster;
    2. with --tls: fetch the cluster CA (checked against --ca-sha256), make keys here with
       openssl, enroll peer, server and client certificates (the keys never leave the node);
    3. register the member's peer and client URLs (DNS, status);
    4. in srv mode, wait until `size` members have registered;
    5. write OUT/etcd.env: the ETCD_* variables the stock etcd reads by itself, and
       OUT/etcdctl.env for local tools.

Every file is written atomically, keys with mode 0600. A node that already joined (same
token, name, address and mode) changes nothing and exits 0, so cloud-init re-runs and reboots
are harmless. Failures are one line on stderr and a non-zero exit; every retry of an
unreachable server is one line with its reason and the next attempt.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

MARKER = "join.json"
DISCOVERY_CA = "discovery-ca.pem"  # the copy of --discovery-cacert that etcd reads
POLL = 1.0
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
COMMAND_TIMEOUT = 30.0  # `etcd --version`, one openssl run, on a loaded machine
V3_DISCOVERY = (3, 6)  # the first etcd with v3 discovery; 3.7 has nothing else
VERSION_RE = re.compile(r"^etcd Version: (\d+)\.(\d+)\.(\d+)", re.MULTILINE)
GIVEN_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?")
NAME_RE = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?", re.IGNORECASE)  # a DNS label
PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
UNKNOWN_CLUSTER = "no such discovery token (expired or mistyped)"
# What identifies a join in OUT/join.json: a re-run with the same values is the same join.
IDENTITY = (
    "server", "token", "name", "ip", "mode", "tls", "out", "data_dir", "peer_port",
    "client_port",
)  # fmt: skip


# -- the HTTP API ------------------------------------------------------------------------------


class ApiError(Exception):
    """The server refused (4xx) or could not be reached before the deadline."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def check_server(url: str) -> str:
    """`url` without a trailing slash if it is an http(s) URL with a host; else ApiError."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        rest = url.strip().split("://")[-1] or "127.0.0.1:8087"
        raise ApiError(
            f"the server {url!r} is not an http:// or https:// URL (for example http://{rest})"
        )
    return url.strip().rstrip("/")


def _quiet(_line: str) -> None:
    return None


class ApiClient:
    """Blocking calls to discoverd's HTTP API. Transport failures and 5xx answers are retried
    with backoff until `deadline` (time.monotonic()), each retry said through `say`; 4xx
    answers are final, raised with the server's own reason."""

    def __init__(
        self,
        server: str,
        deadline: float,
        request_timeout: float = 10.0,
        say: Callable[[str], None] = _quiet,
        headers: Mapping[str, str] | None = None,  # sent with every request (admin bearer)
    ) -> None:
        self.server = check_server(server)
        self.deadline = deadline
        self.request_timeout = request_timeout
        self.say = say
        self.headers = dict(headers or {})

    def get_json(self, path: str) -> Any:
        return json.loads(self.call("GET", path))

    def get_text(self, path: str) -> str:
        return self.call("GET", path).decode()

    def send_json(self, method: str, path: str, body: Any) -> Any:
        return json.loads(self.call(method, path, json.dumps(body).encode()))

    def cluster(self, token: str) -> Any:
        """The JSON view of a cluster; an unknown token is said so, not in etcd's words."""
        try:
            return self.get_json(f"/api/v1/clusters/{token}")
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(UNKNOWN_CLUSTER, 404) from None
            raise

    def call(self, method: str, path: str, data: bytes | None = None) -> bytes:
        url = self.server + path
        delay = BACKOFF_START
        while True:
            request = urllib.request.Request(url, data=data, method=method, headers=self.headers)  # noqa: S310
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:  # noqa: S310
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise ApiError(_reason(exc), exc.code) from None
                problem = f"{self.server} answered {exc.code}: {_reason(exc)}"
            except (urllib.error.URLError, OSError) as exc:
                problem = f"cannot reach {self.server}: {getattr(exc, 'reason', exc)}"
            left = self.deadline - time.monotonic()
            if delay > left:
                raise ApiError(f"gave up: {problem}")
            self.say(f"{problem}; next attempt in {delay:g}s (giving up in {left:.0f}s)")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or f"HTTP {exc.code}"


# -- the join ----------------------------------------------------------------------------------


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


def join(request: JoinRequest, timeout: float, say: Callable[[str], None] = print) -> str:
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
    if not NAME_RE.fullmatch(request.name):
        raise JoinError(
            f"--name {request.name!r} is not a DNS label (letters, digits, '-', '_'; at most 63)"
        )
    try:
        ipaddress.ip_address(request.ip)
    except ValueError:
        raise JoinError(f"--ip {request.ip!r} is not an IP address") from None
    if request.ca_sha256 and not request.tls:
        raise JoinError("--ca-sha256 pins the CA of a TLS cluster: add --tls")
    if request.discovery_cacert and not Path(request.discovery_cacert).is_file():
        raise JoinError(f"--discovery-cacert {request.discovery_cacert}: no such file")


def etcd_version(request: JoinRequest) -> tuple[int, int]:
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
            [binary, "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return _unknown_version(f"`{binary} --version` did not answer in {COMMAND_TIMEOUT:.0f}s")
    except OSError as exc:
        return _unknown_version(f"cannot run {binary}: {exc.strerror or exc}")
    found = VERSION_RE.search(run.stdout)
    if run.returncode != 0 or not found:
        said = (run.stdout + run.stderr).strip().splitlines()[:1] or ["nothing"]
        return _unknown_version(
            f"`{binary} --version` exited {run.returncode} and said {said[0][:120]!r}"
        )
    return int(found.group(1)), int(found.group(2))


def _unknown_version(why: str) -> tuple[int, int]:
    raise JoinError(f"cannot tell the etcd version: {why}; pass --etcd-version")


def _discovery_kind(version: tuple[int, int]) -> str:
    if version >= V3_DISCOVERY:
        return "v3 discovery (ETCD_DISCOVERY_TOKEN, ETCD_DISCOVERY_ENDPOINTS)"
    return "v2 discovery (ETCD_DISCOVERY)"


def _check_v3(cluster: dict[str, Any], version: tuple[int, int]) -> None:
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


def _wait_for_members(
    client: ApiClient, request: JoinRequest, size: int, say: Callable[[str], None]
) -> None:
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


# -- certificates, with openssl ----------------------------------------------------------------


def _certificates(
    client: ApiClient,
    request: JoinRequest,
    cluster: dict[str, Any],
    out: Path,
    say: Callable[[str], None],
) -> None:
    ca_pem = client.get_text(f"/api/v1/clusters/{request.token}/ca.pem")
    got = cert_sha256(ca_pem)
    if request.ca_sha256:
        wanted = request.ca_sha256.replace(":", "").lower()
        if got != wanted:
            raise JoinError(f"the server's CA has sha256 {got}, not {wanted}: refusing to trust it")
    write_public(out / "ca.pem", ca_pem)
    # A named cluster's certificates name only <name>.<zone>: SANs are shown to everyone who
    # connects to a member, and the token is a secret.
    domains = cluster["dns"]["domains"][1:] if cluster.get("name") else cluster["dns"]["domains"]
    names = [f"{request.name}.{domain}" for domain in domains] + list(domains)
    host_sans = [f"DNS:{name}" for name in names] + [f"IP:{request.ip}"]
    for profile, sans in (("peer", host_sans), ("server", host_sans), ("client", [])):
        _enroll(client, request, profile, sans, out)
        say(f"{profile} certificate ready")


def cert_sha256(pem: str) -> str:
    """SHA-256 of the (first) certificate's DER, lowercase hex: what --ca-sha256 pins."""
    found = PEM_CERT_RE.search(pem)
    if not found:
        raise JoinError("the server's ca.pem holds no PEM certificate")
    try:
        der = base64.b64decode("".join(found.group(1).split()), validate=True)
    except ValueError:
        raise JoinError("the server's ca.pem is not valid PEM") from None
    return hashlib.sha256(der).hexdigest()


def _enroll(
    client: ApiClient, request: JoinRequest, profile: str, sans: list[str], out: Path
) -> None:
    cert_path, key_path = out / f"{profile}.pem", out / f"{profile}-key.pem"
    if cert_path.exists() and key_path.exists() and _issued_by(cert_path, out / "ca.pem"):
        return  # a re-run after a partial failure: the certificate is already here
    # ECDSA P-256, PKCS#8 on stdout: the key exists only in memory until it is written 0600
    key = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    req = ["req", "-new", "-batch", "-sha256", "-key", "/dev/stdin", "-subj", f"/CN={request.name}"]
    if sans:
        req += ["-addext", "subjectAltName=" + ",".join(sans)]
    csr = openssl(*req, stdin=key)
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
    write_private(key_path, key)
    write_public(cert_path, issued["certificate"])


def openssl(*args: str, stdin: str | None = None) -> str:
    """Run the openssl command; its stdout. A failure is a JoinError with openssl's words."""
    try:
        run = subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise JoinError("--tls needs the openssl command, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise JoinError(f"`openssl {args[0]}` did not finish in {COMMAND_TIMEOUT:.0f}s") from None
    if run.returncode != 0:
        said = run.stderr.strip().splitlines()[:1] or [f"exit {run.returncode}"]
        raise JoinError(f"`openssl {args[0]}` failed: {said[0][:200]}")
    return run.stdout


def _issued_by(cert_path: Path, ca_path: Path) -> bool:
    """Whether the CA signed the certificate (its dates aside: a re-run keeps what it has)."""
    try:
        openssl("verify", "-no_check_time", "-CAfile", str(ca_path), str(cert_path))
    except JoinError:
        return False
    return True


def write_private(path: Path, text: str) -> None:
    """Write a secret atomically with mode 0600 (never briefly readable by others)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_public(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# -- what etcd and etcdctl read ----------------------------------------------------------------


def render_env(
    request: JoinRequest, cluster: dict[str, Any], out: Path, version: tuple[int, int] | None
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
        cacert = out / DISCOVERY_CA if request.discovery_cacert else None
        env.update(discovery_env(cluster, version, cacert))
    else:
        env["ETCD_DISCOVERY_SRV"] = cluster["dns"]["domains"][-1]  # <name>.<zone> if named
        env["ETCD_INITIAL_CLUSTER_TOKEN"] = request.token
    if request.tls:
        env.update(
            ETCD_TRUSTED_CA_FILE=str(out / "ca.pem"),
            ETCD_CERT_FILE=str(out / "server.pem"),
            ETCD_KEY_FILE=str(out / "server-key.pem"),
            ETCD_CLIENT_CERT_AUTH="true",
            ETCD_PEER_TRUSTED_CA_FILE=str(out / "ca.pem"),
            ETCD_PEER_CERT_FILE=str(out / "peer.pem"),
            ETCD_PEER_KEY_FILE=str(out / "peer-key.pem"),
            ETCD_PEER_CLIENT_CERT_AUTH="true",
        )
    return "".join(f"{key}={value}\n" for key, value in env.items())


def discovery_env(
    cluster: dict[str, Any], version: tuple[int, int], cacert: Path | None
) -> dict[str, str]:
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
        env.update(
            ETCDCTL_CACERT=str(out / "ca.pem"),
            ETCDCTL_CERT=str(out / "client.pem"),
            ETCDCTL_KEY=str(out / "client-key.pem"),
        )
    return "".join(f"{key}={value}\n" for key, value in env.items())


# -- the command line (`python3 join.py ...` and `discoverd join ...`) ------------------------


def add_arguments(command: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The join's flags; --server defaults to DISCOVERD_SERVER from `environ`."""
    server = environ.get("DISCOVERD_SERVER")
    command.add_argument(
        "--server", default=server, required=server is None,
        help="discoverd base URL, http:// or https:// (or DISCOVERD_SERVER)",
    )  # fmt: skip
    command.add_argument(
        "--token", help="the cluster token (or DISCOVERD_TOKEN: not visible in the process list)"
    )
    command.add_argument("--name", required=True, help="this member's name (--name of etcd)")
    command.add_argument("--ip", required=True, help="the address its peers and clients use")
    command.add_argument(
        "--mode", choices=["discovery", "srv"], default="discovery",
        help="discovery: etcd finds its peers through discoverd (v3 or v2 by etcd's version); "
        "srv: through discoverd's DNS SRV records, once all members registered (discovery)",
    )  # fmt: skip
    command.add_argument("--tls", action="store_true", help="enroll certificates; https everywhere")
    command.add_argument("--ca-sha256", help="refuse a CA whose SHA-256 differs (from `new`)")
    command.add_argument("--out", required=True, help="where etcd.env and the PEM files go")
    command.add_argument(
        "--data-dir", default="/var/lib/etcd", help="ETCD_DATA_DIR (/var/lib/etcd)"
    )
    command.add_argument("--peer-port", type=int, default=2380, help="etcd peer port (2380)")
    command.add_argument("--client-port", type=int, default=2379, help="etcd client port (2379)")
    local = command.add_mutually_exclusive_group()
    local.add_argument(
        "--local-client", dest="local_client", action="store_true", default=True,
        help="etcd also serves clients on 127.0.0.1:<client-port> (the default)",
    )  # fmt: skip
    local.add_argument(
        "--no-local-client", dest="local_client", action="store_false",
        help="etcd serves clients on --ip only",
    )  # fmt: skip
    command.add_argument(
        "--etcd-binary", default="etcd",
        help="the etcd this node runs, asked for its version in discovery mode (etcd on PATH)",
    )  # fmt: skip
    command.add_argument(
        "--etcd-version",
        metavar="X.Y[.Z]",
        help="the etcd version, instead of asking --etcd-binary",
    )
    command.add_argument(
        "--discovery-cacert", metavar="PATH",
        help="CA of discoverd's TLS gRPC listener, for etcd >= 3.6 (default: system roots)",
    )  # fmt: skip
    command.add_argument(
        "--timeout", default="10m", help="retry an unreachable server this long (10m; s, m, h)"
    )


def parse_timeout(text: str) -> float:
    """Seconds from `90`, `50s`, `15m`, `1h30m`, `250ms` (as `discoverd serve` reads them)."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    elif re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h|d))+", raw):
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", raw)
        seconds = sum(float(number) * units[unit] for number, unit in parts)
    else:
        raise ValueError(f"--timeout {text!r} is not a duration (use e.g. 90s, 15m, 1h30m)")
    if seconds <= 0:
        raise ValueError(f"--timeout {text!r} must be positive")
    return seconds


def run(args: argparse.Namespace, environ: Mapping[str, str], prog: str) -> int:
    """Join from parsed flags: the summary on stdout, progress and failures on stderr."""
    token = args.token or environ.get("DISCOVERD_TOKEN", "")
    if not token:
        print(f"{prog}: give --token, or DISCOVERD_TOKEN in the environment", file=sys.stderr)
        return 2
    try:
        timeout = parse_timeout(args.timeout)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    request = JoinRequest(
        server=args.server, token=token, name=args.name, ip=args.ip, mode=args.mode,
        tls=args.tls, out=args.out, data_dir=args.data_dir, peer_port=args.peer_port,
        client_port=args.client_port, ca_sha256=args.ca_sha256, etcd_binary=args.etcd_binary,
        etcd_version=args.etcd_version, discovery_cacert=args.discovery_cacert,
        local_client=args.local_client,
    )  # fmt: skip
    try:
        print(join(request, timeout, say=lambda line: print(f"join: {line}", file=sys.stderr)))
    except JoinError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc.filename or args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    command = argparse.ArgumentParser(
        prog="join.py",
        description="Prepare this node to join an etcd cluster through discoverd: enroll "
        "certificates, register the member, write OUT/etcd.env for the stock etcd of this "
        "node's version (v3 discovery for etcd >= 3.6, v2 for <= 3.5).",
    )
    add_arguments(command, os.environ)
    return run(command.parse_args(argv), os.environ, "join.py")


if __name__ == "__main__":
    sys.exit(main())
