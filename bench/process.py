"""The child processes the bench owns, all ended by pid: long-running servers (`ManagedProcess`:
discoverd, dnsmasq, cfssl serve) and one-shot tools whose output is read (`run_output`: wrk,
dnsperf, py-spy). Every child dies with the bench on Linux (`die_with_parent`)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import subprocess
import sys
from pathlib import Path

STOP_TIMEOUT = 10.0
OUTPUT_TAIL = 500  # characters of a failed tool's output put in its error


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ManagedProcess:
    """One server started from `command` with stdout and stderr appended to `log_path`, and
    stopped by pid: SIGTERM, then SIGKILL when it has not exited within `stop_timeout` s."""

    name = "process"  # as in "<name> is not running"
    error: type[Exception] = RuntimeError
    stop_timeout = STOP_TIMEOUT

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.command: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise self.error(f"{self.name} is not running")
        return self.process.pid

    def launch(self) -> None:
        """Start `command`, stdin closed, its output appended to the log."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(self.stop_timeout)

    def log_lines(self) -> list[str] | None:
        """Every line of the log; None when it cannot be read."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").splitlines()
        return None

    def log_tail(self, lines: int = 6) -> list[str]:
        return (self.log_lines() or [])[-lines:]


async def run_output(
    command: list[str], limit: float, *, stdin: int | None = None, tail: int | None = OUTPUT_TAIL
) -> str:
    """stdout + stderr of `command`, which is killed by pid if it runs past `limit` seconds and
    must exit with 0, else RuntimeError `<program> exited with <code>: <its output>` (the last
    `tail` characters of it; all with None). `stdin` None: the bench's own is inherited."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        shown = text if tail is None else text[-tail:]
        raise RuntimeError(f"{Path(command[0]).name} exited with {process.returncode}: {shown}")
    return text
