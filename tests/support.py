"""Test helpers: real processes on loopback, started and stopped by pid; readiness by polling."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

# Settings for an in-process app that binds no fixed port: the defaults (DNS 8053, gRPC 8379)
# would collide with a second test run, or with a `make run`, on the same machine.
FREE_PORTS = {"dns_listen": "127.0.0.1:0", "grpc_listen": "127.0.0.1:0"}


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http(
    method: str, url: str, data: bytes | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request that returns (status, headers, body) for every status."""
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: all held bound at once while the kernel picks them."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


class DiscoverdProcess:
    """`python -m discoverd serve` as a real process on free loopback ports: HTTP (`port`), DNS
    (`dns_port`) and gRPC, the v3 discovery face (`grpc_port`, `grpc_endpoint`). A restart
    (`start()` again) comes back on the same ports."""

    def __init__(
        self, tmp: Path, etcd: Sequence[str] = (), *extra: str, port: int = 0, grpc_port: int = 0
    ) -> None:
        picked = free_ports(3)  # distinct: two free_port() calls may return the same port
        self.port = port or picked[0]
        self.dns_port = picked[1]
        self.grpc_port = grpc_port or picked[2]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / f"discoverd-{self.port}"
        self.log_path = tmp / f"discoverd-{self.port}.log"
        self.args = [
            sys.executable,
            "-m",
            "discoverd",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--new-rate",
            "0",
            "--dns-listen",
            f"127.0.0.1:{self.dns_port}",
            "--grpc-listen",
            self.grpc_endpoint,
            *(["--etcd", ",".join(etcd)] if etcd else []),
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> DiscoverdProcess:
        """Start the process without waiting for it (several at once, then `start` each)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        return self

    def start(self, timeout: float = 30, healthy: bool = True) -> DiscoverdProcess:
        if self.process is None:
            self.launch()
        if healthy:
            wait_until(
                self.healthy, timeout, f"discoverd on {self.url} to be healthy ({self.log()})"
            )
        else:
            wait_until(self.listening, timeout, f"discoverd on {self.url} to listen ({self.log()})")
        return self

    def run_to_exit(self, timeout: float) -> int:
        """Start it and wait (polling) until it exits by itself; its exit status. The caller
        still calls stop(), which ends it if it did not exit in time."""
        process = self.launch().process
        assert process is not None
        wait_until(lambda: process.poll() is not None, timeout, f"discoverd to exit: {self.log()}")
        return process.returncode

    @property
    def grpc_endpoint(self) -> str:
        """`host:port` of the v3 discovery face, as etcd's `--discovery-endpoints` takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    def healthy(self) -> bool:
        return self.listening() and http("GET", self.url + "/health", timeout=3)[0] == 200

    def listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"discoverd exited with {self.process.returncode}: {self.log()}")
        try:
            http("GET", self.url + "/", timeout=1)
        except OSError:
            return False
        return True

    def new(self, size: int = 3) -> str:
        status, _, body = http("POST", f"{self.url}/new?size={size}")
        assert status == 200, body
        return body.decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
    return True
