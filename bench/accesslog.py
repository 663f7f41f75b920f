"""The access log's cost per request, measured in the same run.

The bench's discoverd runs at the default level (info: one JSON access line per request, built
on the event loop and written to its stderr file by the log-writer thread). This phase starts a
second discoverd on the same etcd, the same in every way but `--log-level warning` (no access
lines), and runs the same wrk load on both, on GET /<token>/_config/size (the cheapest request,
where a fixed cost per request shows most), alternated `ROUNDS` times (default, warning,
default, warning, ...) so that a change in the machine's load touches both sides. The second
discoverd is stopped by pid before the phase returns.

Per side: requests per second (all its requests over all its seconds), the discoverd process's
CPU µs per request (event loop and log writer together), and log bytes per request. Then the
cost per request of the access log: in wall time (1e6 / req/s: a discoverd is one event loop, so
at saturation that is its time per request) and in CPU time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import load, servers
from bench.loadspec import Load

ROUNDS = 2
MIN_SECONDS = 2.0  # per run: the bench's duration / ROUNDS, at least this
WARMUP = 2.0  # unscored load on the fresh second process first
READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
LEVEL = ("--log-level", "warning")


async def cost(
    stack: servers.Stack, token: str, scratch: Path, duration: float, say: Callable[[str], None]
) -> dict[str, Any]:
    seconds = max(duration / ROUNDS, MIN_SECONDS)
    path = f"/{token}/_config/size"
    replica = stack.spawn_replica("discoverd-warning", LEVEL)  # forked by the loop's thread
    try:
        await asyncio.to_thread(replica.wait_healthy)
        await _serving(replica.url + path)
        await load.measure(Load("access_warmup", replica.url + path, "GET", WARMUP), scratch)
        sides: dict[str, servers.Discoverd] = {"default": stack, "warning": replica}
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for _ in range(ROUNDS):
            for side, server in sides.items():
                spec = Load(f"access_{side}", server.url + path, "GET", seconds)
                found = await _one(server, spec, scratch)
                say(
                    f"  {side:7}: {found['requests_per_s']:,.0f} req/s, "
                    f"{found['cpu_us_per_request']:.1f} µs CPU/request"
                )
                runs[side].append(found)
        command = replica.command
    finally:
        await asyncio.to_thread(replica.stop)
    return summarize(runs, seconds) | {"second_server_command": " ".join(command[4:])}


async def _one(server: servers.Discoverd, spec: Load, scratch: Path) -> dict[str, Any]:
    cpu = sum(servers.cpu_seconds(server.pid))
    logged = server.log_size()
    result = (await load.measure(spec, scratch)).as_dict()
    used = sum(servers.cpu_seconds(server.pid)) - cpu
    requests = max(result["requests"], 1)
    result["cpu_s"] = round(used, 3)
    result["cpu_us_per_request"] = round(used / requests * 1e6, 2)
    result["log_bytes_per_request"] = round((server.log_size() - logged) / requests, 1)
    return result


def summarize(runs: dict[str, list[dict[str, Any]]], seconds: float) -> dict[str, Any]:
    """Each side over all its runs, then the access log's cost per request."""
    found: dict[str, Any] = {"rounds": ROUNDS, "seconds_per_run": seconds, "runs": runs}
    for side, results in runs.items():
        requests = sum(r["requests"] for r in results)
        elapsed = sum(r["duration_s"] for r in results)
        cpu = sum(r["cpu_s"] for r in results)
        found[side] = {
            "requests_per_s": round(requests / elapsed, 1) if elapsed else 0.0,
            "cpu_us_per_request": round(cpu / requests * 1e6, 2) if requests else 0.0,
            "log_bytes_per_request": round(
                sum(r["log_bytes_per_request"] * r["requests"] for r in results) / max(requests, 1),
                1,
            ),
            "p50_ms": [r["p50_ms"] for r in results],
            "p99_ms": [r["p99_ms"] for r in results],
            "errors": sum(r["non_2xx"] + r["socket_errors"] for r in results),
        }
    default, warning = found["default"], found["warning"]
    if default["requests_per_s"] and warning["requests_per_s"]:
        found["ratio"] = round(default["requests_per_s"] / warning["requests_per_s"], 3)
        found["wall_us_per_request"] = round(
            1e6 / default["requests_per_s"] - 1e6 / warning["requests_per_s"], 2
        )
        found["cpu_us_per_request"] = round(
            default["cpu_us_per_request"] - warning["cpu_us_per_request"], 2
        )
    return found


async def _serving(url: str) -> None:
    """Poll until the second discoverd answers the read with 200 (its view holds the token)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if await asyncio.to_thread(servers.get_status, url, 1.0) == 200:
            return
        await asyncio.sleep(POLL_INTERVAL)
    raise RuntimeError(f"the second discoverd did not serve the token in {READY_TIMEOUT:.0f} s")
