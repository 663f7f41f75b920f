"""The processes a bench run owns: one embedded etcd and one `discoverd serve`, on loopback,
and for one phase a second `discoverd serve` on the same etcd (`Stack.spawn_replica`).

discoverd runs as a user runs it: default log level and format (info, one JSON access line per
request), its stderr appended to a file as a journal would get it. The only flags that differ
from the defaults are those of `Discoverd.serve_flags`, each with why (the run's JSON lists them
under server.differing_flags): free ports, a scratch data dir, the bench's etcd, and the limits
a load from one address would otherwise measure.

Every process is started here and polled until ready (never slept on), and stopped by pid
(`Stack.stop` ends discoverd and etcd; discoverd is a `bench.process.ManagedProcess`). The
children inherit the bench's raised RLIMIT_NOFILE (see `raise_nofile`), so the one discoverd
process can hold every concurrent wait, and they die with the bench on Linux.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.process import ManagedProcess
from discoverd.store.embedded import EmbeddedEtcd, EmbeddedEtcdError, free_port

DNS_ZONE = "etcd.internal"
MAX_SIZE = 999  # --max-size: the largest token discoverd accepts (its own limit)
MAX_TOKENS = 100_000_000  # --max-tokens: the /new load must not reach the live-token cap
FREE_PORT = "a free loopback port, never the default another instance may hold"
PORT_ATTEMPTS = 50
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05


class StackError(RuntimeError):
    """A bench process could not be started."""


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-files soft limit to its hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """(status, decoded body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def get_status(url: str, timeout: float = 2.0) -> int:
    """The status of a GET; 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Discoverd(ManagedProcess):
    """One `discoverd serve` on a given etcd, run as a user runs it: default log level and
    format (info, JSON: one access line per request), stderr appended to a file as a journal
    would get it. Only the flags of `serve_flags` differ from the defaults; `extra` adds more
    (the access-log phase's `--log-level warning`)."""

    name = "discoverd"
    error = StackError
    stop_timeout = STOP_TIMEOUT

    def __init__(self, scratch: Path, label: str, wait_timeout: str) -> None:
        super().__init__(scratch / f"{label}.log")
        self.scratch = scratch
        self.data_dir = scratch / f"{label}-data"
        self.port = 0
        self.url = ""
        self.wait_timeout = wait_timeout
        self.dns_port: int | None = None  # None: this discoverd has no DNS responder
        self.grpc_port: int | None = None  # None: this discoverd has no v3 face
        self.dns_zone = DNS_ZONE
        self.differing: dict[str, str] = {}  # flag -> why it differs from the default

    def serve(self, endpoint: str, extra: tuple[str, ...] = ()) -> None:
        """Start it on `endpoint` and wait until /health answers 200."""
        self.spawn(endpoint, extra)
        self.wait_healthy()

    def spawn(self, endpoint: str, extra: tuple[str, ...] = ()) -> None:
        """Start it on `endpoint`, not waiting. Call it from a thread that outlives it (the event
        loop's): Linux sends the parent-death signal when the forking *thread* exits."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = self.serve_flags(endpoint, serve_help())
        self.differing = {flag: why for flag, (_, why) in flags.items()}
        self.command = [sys.executable, "-m", "discoverd", "serve"]
        for flag, (value, _) in flags.items():
            self.command += [flag, value]
        self.command += list(extra)
        self.launch()

    def serve_flags(self, endpoint: str, available: str) -> dict[str, tuple[str, str]]:
        """flag -> (value, why the bench does not run the default), for the flags this
        version of `discoverd serve` has (`available`: its --help)."""
        flags = {
            "--etcd": (
                endpoint,
                "the bench's own etcd: the same code, binary and flags as the embedded default "
                "(discoverd.store.embedded), started by the bench so that it has etcd's pid (CPU "
                "per phase) and a second discoverd can share it",
            ),
            "--listen": (f"127.0.0.1:{self.port}", FREE_PORT),
            "--data-dir": (str(self.data_dir), "a scratch directory, removed after the run"),
            "--wait-timeout": (
                self.wait_timeout,
                "the waits phase opens 10,000 long-polls, which can take past the default 50 s "
                "on a busy machine: the first would end empty before the last opened",
            ),
        }
        one_client = "the /new load makes thousands of tokens a second from one address"
        optional = {
            "--new-rate": ("0", one_client),
            "--new-per-hour": ("0", one_client),
            "--max-tokens": (str(MAX_TOKENS), one_client + ", past the 100,000 live-token cap"),
            "--max-size": (str(MAX_SIZE), "the certificate phase enrolls 999 names per token"),
            "--dns-rate": ("0", "dnsperf is one source: the per-source limit would cap it"),
        }
        flags.update({flag: spec for flag, spec in optional.items() if flag in available})
        if "--dns-listen" in available:
            self.dns_port = free_dns_port()
            flags["--dns-listen"] = (f"127.0.0.1:{self.dns_port}", FREE_PORT)
        if "--grpc-listen" in available:
            self.grpc_port = free_port()
            flags["--grpc-listen"] = (f"127.0.0.1:{self.grpc_port}", FREE_PORT)
        return flags

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise StackError(
                    f"discoverd exited with {self.process.returncode}: {self.log_excerpt()}"
                )
            if get_json(f"{self.url}/health", timeout=1.0)[0] == 200:
                return
            time.sleep(POLL_INTERVAL)
        raise StackError(f"discoverd not healthy after {READY_TIMEOUT:.0f}s: {self.log_excerpt()}")

    def log_excerpt(self, lines: int = 8) -> str:
        """The log's last `lines` lines on one line, for an error message."""
        found = self.log_tail(lines)
        return " | ".join(found) if found else "(no log)"

    def log_tail(self, lines: int = 6) -> list[str]:
        """The last `lines` lines, read as a stream (the access log makes the file large)."""
        with contextlib.suppress(OSError), self.log_path.open(errors="replace") as log:
            return [line.rstrip("\n") for line in collections.deque(log, lines)]
        return []

    def log_problems(self, limit: int = 20) -> list[str]:
        """The last `limit` lines the server logged above info: JSON records at warning or
        worse, and anything that is not a JSON record (a traceback, a crash)."""
        found: collections.deque[str] = collections.deque(maxlen=limit)
        with contextlib.suppress(OSError), self.log_path.open(errors="replace") as log:
            for line in log:
                if line.strip() and _problem(line):
                    found.append(line.rstrip("\n")[:400])
        return list(found)

    def log_size(self) -> int:
        """Bytes written to the log so far."""
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0


def _problem(line: str) -> bool:
    if not line.startswith("{"):
        return True
    try:
        level = json.loads(line).get("level", "")
    except ValueError:
        return True
    return level not in ("info", "debug")


class Stack(Discoverd):
    """etcd + one discoverd, started in a scratch directory and stopped by pid."""

    def __init__(self, scratch: Path, wait_timeout: str) -> None:
        super().__init__(scratch, "discoverd", wait_timeout)
        self.etcd = EmbeddedEtcd(scratch / "etcd", name="bench")

    @property
    def etcd_pid(self) -> int:
        if self.etcd.process is None:
            raise StackError("etcd is not running")
        return self.etcd.process.pid

    def start(self) -> None:
        try:
            endpoint = self.etcd.start(READY_TIMEOUT)
        except EmbeddedEtcdError as exc:
            raise StackError(str(exc)) from exc
        self.serve(endpoint)

    def spawn_replica(self, label: str, extra: tuple[str, ...]) -> Discoverd:
        """A second discoverd on the same etcd with the same service key, as replicas run,
        plus `extra` flags; started (see `spawn`), not yet healthy (`wait_healthy`). The
        caller stops it by pid (`stop()`)."""
        other = Discoverd(self.scratch, label, self.wait_timeout)
        try:
            other.spawn(self.etcd.endpoint, ("--service-key-file", str(self.key_file), *extra))
        except BaseException:
            other.stop()
            raise
        return other

    @property
    def key_file(self) -> Path:
        """The service key this discoverd made at its first start (a replica needs it)."""
        return self.data_dir / "service.key"

    def etcd_version(self) -> str:
        status, body = get_json(f"{self.etcd.endpoint}/version")
        return str(body.get("etcdserver", "unknown")) if status == 200 else "unknown"

    def server_limits(self) -> str:
        """The server's open-files limit line from /proc/<pid>/limits."""
        with contextlib.suppress(OSError, StackError):
            for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return " ".join(line.split()[3:5])
        return "unknown"

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.etcd.stop()


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (a DNS server binds both)."""
    for _ in range(PORT_ATTEMPTS):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise StackError(f"no port free for both UDP and TCP on {host}")


def serve_help() -> str:
    """The help text of `discoverd serve`, to pass only the flags this version has."""
    done = subprocess.run(
        [sys.executable, "-m", "discoverd", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds `pid` has used, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of `pid`, in kB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0])
    return found
