"""Concurrent waits on one token, against the one discoverd process.

`concurrent_waits`: hold `count` long-polls, confirm the server holds them all
(`discoverd_waits_in_flight`), read its RSS, then register a member and time until every wait
has returned the event (wake-all latency).

`disconnect_all`: hold `count` long-polls again, then drop every client connection, newest
first, and time until the server has let go of every wait. The server's event loop does that
work, so the slowest /metrics poll meanwhile shows how long it stopped serving anyone else.

Connections are opened `OPEN_PARALLEL` at a time: aiohttp listens with a backlog of 128, and a
burst of thousands of SYNs past it would measure the kernel's SYN retries, not discoverd. They
come from `PER_SOURCE` at most per loopback source address (127.0.150.1, 127.0.150.2, ...), as
waiting members come from many hosts: discoverd caps the connections of one client address
(discoverd.listener.PER_ADDRESS, 256), and a bench from one address would measure that cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import client
from bench.servers import rss_kb
from bench.stats import summary_ms

SESSIONS = 8  # at least this many client sessions, each from its own source address
PER_SOURCE = 200  # waits per source address: below discoverd's cap of 256 per client address
SOURCE_THIRD = 150  # source addresses 127.0.150.1 and up (the tests' members use other /24s)
OPEN_PARALLEL = 128
OPEN_TIMEOUT = 120.0
GAUGE_TIMEOUT = 20.0
DRAIN_TIMEOUT = 60.0
POLL = 0.1
WAKE_TIMEOUT = 60.0
HOLD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=150)
POLL_TIMEOUT = aiohttp.ClientTimeout(total=30)
GAUGE = "discoverd_waits_in_flight"


@dataclass
class Held:
    """`count` waits being opened on `token`; `settled` is set once each opened or failed."""

    token: str
    count: int
    tasks: list[asyncio.Task[tuple[float, bytes]]] = field(default_factory=list)
    opened: int = 0
    failed: int = 0
    open_s: float = 0.0
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, ok: bool) -> None:
        self.opened += int(ok)
        self.failed += int(not ok)
        if self.opened + self.failed >= self.count:
            self.settled.set()


async def concurrent_waits(base: str, pid: int, count: int) -> dict[str, Any]:
    found: dict[str, Any] = {"target": count, "errors": []}
    async with aiohttp.ClientSession() as control:
        before = rss_kb(pid)["VmRSS"]
        async with _holding(control, base, count) as held:
            found.update(_opened(held))
            found["waits_in_flight_metric"] = await _gauge_until(control, base, held.opened)
            rss = {"before": before, "held": rss_kb(pid)["VmRSS"]}
            found["registry_clusters"] = await _clusters(control, base)
            sent = time.perf_counter()
            await client.register(control, base, held.token, "c3", 3)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*held.tasks, return_exceptions=True), WAKE_TIMEOUT
            )
            found.update(_tally(outcomes, sent, f"/{held.token}/c3", found["errors"]))
            memory = rss_kb(pid)
            rss.update(after_wake=memory["VmRSS"], peak=memory["VmHWM"])
    found["rss_kb"] = rss
    found["rss_held_mb"] = round(rss["held"] / 1024, 1)
    if held.opened:
        found["rss_per_wait_kb"] = round((rss["held"] - before) / held.opened, 2)
    return found


async def disconnect_all(base: str, count: int) -> dict[str, Any]:
    found: dict[str, Any] = {"target": count}
    async with aiohttp.ClientSession() as control, _holding(control, base, count) as held:
        found.update(_opened(held))
        found["waits_in_flight_metric"] = await _gauge_until(control, base, held.opened)
        dropped = time.perf_counter()
        for task in reversed(held.tasks):
            task.cancel()
        await asyncio.gather(*held.tasks, return_exceptions=True)
        polls: list[float] = []
        left = await _gauge_until(control, base, 0, DRAIN_TIMEOUT, polls, down=True)
        found["release_all_s"] = round(time.perf_counter() - dropped, 3)
    found["waits_left"] = left
    found["slowest_poll_ms"] = round(max(polls, default=0.0) * 1000, 1)
    return found


@asynccontextmanager
async def _holding(control: aiohttp.ClientSession, base: str, count: int) -> AsyncIterator[Held]:
    """Open `count` waits for the next registration on a new token; close them all on exit."""
    token = await client.new_token(control, base, 3)
    index = await client.etcd_index(control, base, token)
    url = f"{base}/{token}?wait=true&recursive=true&waitIndex={index + 1}"
    held = Held(token, count)
    gate = asyncio.Semaphore(OPEN_PARALLEL)
    pool = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(source(n), 0)),
            timeout=HOLD_TIMEOUT,
        )
        for n in range(max(SESSIONS, math.ceil(count / PER_SOURCE)))
    ]
    held.tasks = [
        asyncio.create_task(_hold(pool[i % len(pool)], url, gate, held)) for i in range(count)
    ]
    try:
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):  # held.opened < count tells the tale
            await asyncio.wait_for(held.settled.wait(), OPEN_TIMEOUT)
        held.open_s = time.perf_counter() - started
        yield held
    finally:
        for task in held.tasks:
            task.cancel()
        await asyncio.gather(*held.tasks, return_exceptions=True)
        await asyncio.gather(*(session.close() for session in pool))


def source(n: int) -> str:
    """The `n`th loopback source address of the waits."""
    return f"127.0.{SOURCE_THIRD + n // 250}.{1 + n % 250}"


async def _hold(
    session: aiohttp.ClientSession, url: str, gate: asyncio.Semaphore, held: Held
) -> tuple[float, bytes]:
    """Open one wait (its headers = the server holds it), then read the event it returns."""
    try:
        async with gate:
            response = await session.get(url)
    except BaseException:
        held.note(False)
        raise
    try:
        held.note(response.status == 200)
        if response.status != 200:
            raise client.BenchHTTPError(f"wait -> {response.status}")
        body = await response.read()
        return time.perf_counter(), body
    except asyncio.CancelledError:
        response.close()  # drop the connection now, as a client that goes away does
        raise
    finally:
        response.release()


def _opened(held: Held) -> dict[str, Any]:
    return {"held": held.opened, "failed_to_open": held.failed, "open_s": round(held.open_s, 3)}


def _tally(
    outcomes: list[tuple[float, bytes] | BaseException], sent: float, key: str, errors: list[str]
) -> dict[str, Any]:
    wake: list[float] = []
    wrong = 0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if len(errors) < 20:
                errors.append(f"{type(outcome).__name__}: {outcome}"[:200])
            continue
        woken, body = outcome
        event = json.loads(body) if body.strip() else {}
        if event.get("action") == "create" and event.get("node", {}).get("key") == key:
            wake.append(woken - sent)
        else:
            wrong += 1
    return {
        "woken": len(wake),
        "wrong_events": wrong,
        "wake_all_s": round(max(wake, default=0.0), 3),
        "wake": summary_ms(wake),
    }


async def _gauge_until(
    session: aiohttp.ClientSession,
    base: str,
    wanted: int,
    within: float = GAUGE_TIMEOUT,
    polls: list[float] | None = None,
    down: bool = False,
) -> float:
    """Poll the server's waits gauge until it reaches `wanted` (from below, or from above with
    `down`); the last value seen. Each poll's latency is appended to `polls`."""
    value = -1.0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        try:
            samples = await client.metrics(session, base, POLL_TIMEOUT)
        except (TimeoutError, aiohttp.ClientError):  # a server frozen this long: poll again
            samples = [(GAUGE, {}, value)]
        if polls is not None:
            polls.append(time.perf_counter() - sent)
        value = client.metric_value(samples, GAUGE)
        if (value <= wanted) if down else (value >= wanted):
            break
        await asyncio.sleep(POLL)
    return value


async def _clusters(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/health", timeout=client.CALL_TIMEOUT) as response:
        body = await response.json()
    return int(body.get("registry", {}).get("clusters", 0))
