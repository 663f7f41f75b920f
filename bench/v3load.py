"""grpc.aio load for the v3 discovery face, with the client stubs generated from discoverd's own
.proto (discoverd/discovery/v3/pb; etcd's .proto is never used), so the same driver runs
against discoverd and against a real etcd.

`range_load`: `concurrency` callers, spread over `channels` connections, each sending
KV/Range on one key back to back for `duration` s: requests/s and latency. Run as its own
process (`python -m bench.v3load range TARGET KEY ...`, JSON on stdout) so that the bench's
event loop does not share the driver's CPU.

`watch_streams`: `count` Watch streams on one token's members prefix, spread over `channels`
connections, each created and waiting; then the registrations, and the time until every
stream has seen the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.stats import summary_ms
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.pb import discovery_pb2_grpc as stubs

CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, like members
    ("grpc.max_concurrent_streams", 100_000),
]
CALL_TIMEOUT = 10.0
OPEN_PARALLEL = 256  # streams being created at once
CREATE_TIMEOUT = 120.0


def channels_to(target: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]


async def close_all(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)


# -- KV/Range load ----------------------------------------------------------------------------


async def range_load(
    target: str, key: bytes, duration: float, concurrency: int, channels: int
) -> dict[str, Any]:
    open_channels = channels_to(target, channels)
    kv = [stubs.KVStub(channel) for channel in open_channels]  # type: ignore[no-untyped-call]
    request = pb.RangeRequest(key=key)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    try:
        first = await kv[0].Range(request, timeout=CALL_TIMEOUT)  # warm the connection
        value = first.kvs[0].value.decode() if first.kvs else None
        deadline = time.perf_counter() + duration

        async def caller(stub: stubs.KVStub) -> None:
            while (now := time.perf_counter()) < deadline:
                try:
                    await stub.Range(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - now)

        started = time.perf_counter()
        await asyncio.gather(*(caller(kv[i % channels]) for i in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        await close_all(open_channels)
    return {
        "target": target,
        "value": value,
        "concurrency": concurrency,
        "channels": channels,
        "duration_s": round(wall, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "errors": errors,
        **summary_ms(latencies),
    }


# -- Watch streams ----------------------------------------------------------------------------


@dataclass
class Streams:
    """`count` waiting Watch streams; `seen[i]` is when stream i saw the awaited key."""

    count: int
    created: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seen: list[float] = field(default_factory=list)
    all_created: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self, ok: bool, error: str = "") -> None:
        self.created += int(ok)
        self.failed += int(not ok)
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
        if self.created + self.failed >= self.count:
            self.all_created.set()


async def watch_streams(
    target: str,
    prefix: bytes,
    start_revision: int,
    count: int,
    channels: int,
    awaited: bytes,
    register: Callable[[], Awaitable[tuple[float, float]]],
    measure_held: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Hold `count` streams watching `prefix` from `start_revision`; once all are created,
    `measure_held()` (e.g. the server's RSS), then `register()` (returns when the last
    registration was sent and when it was acknowledged); then wait until every stream saw
    `awaited`. Wake latencies count from the send."""
    open_channels = channels_to(target, channels)
    watch = [stubs.WatchStub(channel) for channel in open_channels]  # type: ignore[no-untyped-call]
    create = pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=prefix, range_end=_prefix_end(prefix), start_revision=start_revision
        )
    )
    streams = Streams(count)
    gate = asyncio.Semaphore(OPEN_PARALLEL)
    done = asyncio.Event()
    found: dict[str, Any] = {"target": count, "channels": channels}

    async def one(stub: stubs.WatchStub) -> None:
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            yield create
            await stop.wait()  # keep our side open until the stream is done

        call = stub.Watch(requests())
        created = False
        try:
            async with gate:
                first = await call.read()
                created = first is not grpc.aio.EOF and first.created and not first.canceled
                streams.settle(created, "" if created else "not created")
            if not created:
                return
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    streams.errors["EOF"] = streams.errors.get("EOF", 0) + 1
                    return
                if any(event.kv.key == awaited for event in response.events):
                    streams.seen.append(time.perf_counter())
                    if len(streams.seen) >= streams.created:
                        done.set()
                    await stop.wait()
                    return
        except grpc.aio.AioRpcError as exc:
            if not created:
                streams.settle(False, exc.code().name)
            else:
                streams.errors[exc.code().name] = streams.errors.get(exc.code().name, 0) + 1
        finally:
            stop.set()
            call.cancel()

    opened = time.perf_counter()
    tasks = [asyncio.create_task(one(watch[i % channels])) for i in range(count)]
    try:
        await asyncio.wait_for(streams.all_created.wait(), CREATE_TIMEOUT)
        found["open_s"] = round(time.perf_counter() - opened, 2)
        found["created"], found["failed"] = streams.created, streams.failed
        found["held"] = measure_held()
        last, acked = await register()
        found["last_put_ms"] = round((acked - last) * 1000, 1)
        try:
            await asyncio.wait_for(done.wait(), CREATE_TIMEOUT)
        except TimeoutError:
            found["wait_timed_out"] = True
        wakes = [moment - last for moment in streams.seen]
        found["woken"] = len(wakes)
        found["woken_within_1s"] = sum(1 for wake in wakes if wake <= 1.0)
        found["wake"] = summary_ms(wakes)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(open_channels)
    found["errors"] = streams.errors
    return found


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m bench.v3load", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    ranged = sub.add_parser("range", help="KV/Range load on one key; JSON on stdout")
    ranged.add_argument("target", help="host:port")
    ranged.add_argument("key")
    ranged.add_argument("--duration", type=float, default=10.0)
    ranged.add_argument("--concurrency", type=int, default=64)
    ranged.add_argument("--channels", type=int, default=8)
    args = top.parse_args(argv)
    found = asyncio.run(
        range_load(args.target, args.key.encode(), args.duration, args.concurrency, args.channels)
    )
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
