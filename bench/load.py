"""Throughput and latency of one endpoint under closed-loop load: wrk when installed (its
`--latency` report is parsed), else the in-process aiohttp generator of `bench.loadgen`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench import loadgen
from bench.loadspec import Load, LoadResult
from bench.process import run_output

WRK_GRACE = 30.0  # wrk gets its duration plus this before it is killed
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")

# wrk sends GET unless a script says otherwise; /new is measured as a POST, as etcd calls it.
_POST_SCRIPT = 'wrk.method = "POST"\n'


def wrk_path() -> str | None:
    return shutil.which("wrk")


async def measure(load: Load, scratch: Path) -> LoadResult:
    """Run `load` with wrk, or with the aiohttp fallback when wrk is not installed."""
    wrk = wrk_path()
    if wrk is None:
        if load.script:
            raise RuntimeError(f"{load.name} needs wrk (a Lua script makes its requests)")
        return await loadgen.run(load)
    return await _run_wrk(wrk, load, scratch)


async def _run_wrk(wrk: str, load: Load, scratch: Path) -> LoadResult:
    command = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{load.duration:g}s",
        "--latency",
    ]
    script = load.script or (_POST_SCRIPT if load.method == "POST" else "")
    if script:
        path = scratch / f"{load.name}.lua"
        path.write_text(script)
        command += ["-s", str(path)]
    command.append(load.url)
    return parse_wrk(await wrk_output(command, load.duration), load, command)


async def wrk_output(command: list[str], duration: float) -> str:
    """The report of one wrk `command` (anything its Lua script printed included); wrk is
    killed by pid if it runs WRK_GRACE seconds past `duration`, and must exit with 0."""
    return await run_output(command, duration + WRK_GRACE)


def parse_wrk(text: str, load: Load, command: list[str]) -> LoadResult:
    """The numbers of one `wrk --latency` report."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output: {text[-500:]}")
    latency = {pct: float(value) * _UNITS[unit] for pct, value, unit in _LATENCY.findall(text)}
    non_2xx = _NON_2XX.search(text)
    socket = _SOCKET.search(text)
    return LoadResult(
        name=load.name,
        tool="wrk",
        method=load.method,
        path=load.path,
        requests_per_s=float(rps.group(1)),
        p50_ms=round(latency.get("50", 0.0), 3),
        p99_ms=round(latency.get("99", 0.0), 3),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        duration_s=round(float(total.group(2)) * _UNITS[total.group(3)] / 1000, 3),
        threads=load.threads,
        connections=load.connections,
        command=command,
    )
