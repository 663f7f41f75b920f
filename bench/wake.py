"""register->wake latency: how long after a member's PUT is sent does a long-poll that waits
for it return the event? This is the step every etcd member takes while bootstrapping.

Each iteration uses a fresh size-2 token: register member A, read X-Etcd-Index X of
GET /<token>, open GET /<token>?recursive=true&wait=true&waitIndex=X+1 (its headers arrive once
the server holds the wait), then PUT member B and time the long-poll's body.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import client
from bench.stats import summary_ms

WAKE_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass
class WakeResult:
    iterations: int
    wake_s: list[float] = field(default_factory=list)
    put_s: list[float] = field(default_factory=list)
    wrong_events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "wake": summary_ms(self.wake_s),
            "put": summary_ms(self.put_s),
            "wrong_events": self.wrong_events,
            "wake_samples_ms": [round(value * 1000, 3) for value in self.wake_s],
        }


async def register_wake(base: str, iterations: int) -> WakeResult:
    result = WakeResult(iterations)
    async with aiohttp.ClientSession() as session:
        for _ in range(iterations):
            wake, put, ok = await _once(session, base)
            result.wake_s.append(wake)
            result.put_s.append(put)
            result.wrong_events += 0 if ok else 1
    return result


async def _once(session: aiohttp.ClientSession, base: str) -> tuple[float, float, bool]:
    token = await client.new_token(session, base, 2)
    await client.register(session, base, token, "a1", 1)
    index = await client.etcd_index(session, base, token)
    url = f"{base}/{token}?recursive=true&wait=true&waitIndex={index + 1}"
    async with session.get(url, timeout=WAKE_TIMEOUT) as poll:
        if poll.status != 200:
            raise client.BenchHTTPError(f"long-poll -> {poll.status}")
        sent = time.perf_counter()
        put = asyncio.create_task(_timed_register(session, base, token, sent))
        body = await poll.read()
        woken = time.perf_counter()
        put_done = await put
    event = json.loads(body) if body.strip() else {}
    node = event.get("node", {})
    ok = event.get("action") == "create" and node.get("key") == f"/{token}/b2"
    return woken - sent, put_done - sent, ok


async def _timed_register(
    session: aiohttp.ClientSession, base: str, token: str, sent: float
) -> float:
    await client.register(session, base, token, "b2", 2)
    return time.perf_counter()
