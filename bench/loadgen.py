"""The fallback load generator when wrk is not installed: `connections` closed-loop aiohttp
workers in this process for `duration` seconds. It is far slower per request than wrk, so its
numbers are a floor for discoverd, not a like-for-like comparison with the wrk anchors.

With `bodies`, the requests send them in order, each once per cycle through the list (the
certificate phase's unique enrollments, bench.signing), with `headers`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence

import aiohttp

from bench.loadspec import Load, LoadResult
from bench.stats import percentile

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def run(
    load: Load, bodies: Sequence[bytes] = (), headers: Mapping[str, str] | None = None
) -> LoadResult:
    latencies: list[float] = []
    cycle = itertools.cycle(bodies) if bodies else None
    counts = {"non_2xx": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=load.connections)
    started = time.perf_counter()
    deadline = started + load.duration
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    body = next(cycle) if cycle is not None else None
                    async with session.request(
                        load.method, load.url, data=body, headers=headers
                    ) as response:
                        await response.read()
                        if not 200 <= response.status < 400:
                            counts["non_2xx"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(worker() for _ in range(load.connections)))
    elapsed = time.perf_counter() - started
    ms = [value * 1000 for value in latencies]
    return LoadResult(
        name=load.name,
        tool="aiohttp fallback (wrk not installed)",
        method=load.method,
        path=load.path,
        requests_per_s=round(len(latencies) / elapsed, 2),
        p50_ms=round(percentile(ms, 50), 3),
        p99_ms=round(percentile(ms, 99), 3),
        requests=len(latencies),
        non_2xx=counts["non_2xx"],
        socket_errors=counts["errors"],
        duration_s=round(elapsed, 3),
        threads=1,
        connections=load.connections,
    )
