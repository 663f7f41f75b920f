"""The processes a bench run owns: one embedded etcd and one `discoverd serve`, on loopback.

Both are started here and polled until ready (never slept on), and `Stack.stop` ends both by
pid (discoverd is a `bench.process.ManagedProcess`). The children inherit the bench's raised
RLIMIT_NOFILE (see `raise_nofile`), so the one discoverd process can hold every concurrent
wait, and they die with the bench on Linux.
"""

from __future__ import annotations

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


class Stack(ManagedProcess):
    """etcd + one discoverd, started in a scratch directory and stopped by pid."""

    name = "discoverd"
    error = StackError
    stop_timeout = STOP_TIMEOUT

    def __init__(self, scratch: Path, wait_timeout: str) -> None:
        super().__init__(scratch / "discoverd.log")
        self.scratch = scratch
        self.etcd = EmbeddedEtcd(scratch / "etcd", name="bench")
        self.port = 0
        self.url = ""
        self.wait_timeout = wait_timeout
        self.dns_port: int | None = None  # None: this discoverd has no DNS responder
        self.grpc_port: int | None = None  # None: this discoverd has no v3 face
        self.dns_zone = DNS_ZONE

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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "discoverd",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--etcd",
            endpoint,
            "--new-rate",
            "0",
            "--log-level",
            "warning",
            "--data-dir",
            str(self.scratch / "discoverd-data"),
            "--wait-timeout",
            self.wait_timeout,
        ]
        flags = serve_flags()
        if "--new-per-hour" in flags:  # the /new load makes thousands of tokens a second
            self.command += ["--new-per-hour", "0", "--max-tokens", "100000000"]
        if "--max-size" in flags:  # the certificate phase enrolls up to 999 names per token
            self.command += ["--max-size", str(MAX_SIZE)]
        if "--dns-listen" in flags:  # never the default port another instance may hold
            self.dns_port = free_dns_port()
            self.command += ["--dns-listen", f"127.0.0.1:{self.dns_port}"]
            self.command += ["--dns-zone", self.dns_zone]
        if "--dns-rate" in flags:  # dnsperf is one source: the per-source limit would cap it
            self.command += ["--dns-rate", "0"]
        if "--grpc-listen" in flags:  # likewise for the v3 discovery face
            self.grpc_port = free_port()
            self.command += ["--grpc-listen", f"127.0.0.1:{self.grpc_port}"]
        self.launch()
        self._wait_healthy()

    def _wait_healthy(self) -> None:
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

    def log_excerpt(self, lines: int = 8) -> str:
        """The log's last `lines` lines on one line, for an error message."""
        found = self.log_lines()
        return "(no log)" if found is None else " | ".join(found[-lines:])

    def log_problems(self, limit: int = 20) -> list[str]:
        """Warning and error lines the server logged (its log level is warning)."""
        lines = self.log_lines() or []
        return [line[:400] for line in lines if line.strip()][-limit:]

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


def serve_flags() -> str:
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
