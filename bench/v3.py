"""The v3 discovery figures, each with its anchor measured in the same run:

  bootstrap  3 and 5 stock etcd 3.7 members (`--discovery-token`, `--discovery-endpoints`)
             through discoverd's v3 face, and through a real etcd 3.7 used as the discovery
             endpoint with the size key put by etcdctl (etcd's own recommended setup): wall
             time from the first member's start until every member's /health is true, median
             of `BOOT_RUNS`. Both sides pay the same etcd process starts.
  watches    N waiting Watch streams (grpc.aio, `bench.v3load`, over 100 connections) on one
             token on the one discoverd process, then the same on the real etcd 3.7: the
             server's RSS while they wait, then 3 registrations back to back and the time from
             the moment the last one's Put was sent until each stream saw it.
  range      KV/Range on a size key, back to back from a separate driver process
             (`python -m bench.v3load range`), on discoverd and on the real etcd 3.7.

The members, the anchor etcd and its etcdctl come from the e2e harness (tests/e2e/v3support.py),
the same code the tests run, and the etcd 3.6/3.7 binaries from `make etcd-test`'s cache. Every
process started here is stopped by pid before the phase returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench import v3load
from bench.process import run_output
from bench.servers import Stack, cpu_seconds, rss_kb
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.pb import discovery_pb2_grpc as stubs
from tests.binaries import BUILT, ETCD_CACHE
from tests.e2e.conftest import Loopback, Members, V3Discovery, built_etcd
from tests.e2e.v3support import ReferenceDiscovery
from tests.e2e.v3support import bootstrap as start_members

V3_SERIES = "3.7"
V3_VERSION = BUILT[V3_SERIES]
BOOT_SIZES = (3, 5)
BOOT_RUNS = 5
BOOT_TIMEOUT = 60.0
RANGE_CONCURRENCY = 64
RANGE_CHANNELS = 8
WATCH_CHANNELS = 100
PUT_TIMEOUT = 30.0
LOOPBACK_THIRD = 200 + os.getpid() % 50  # tests start at 1 + pid % 100: apart from them
Say = Callable[[str], None]


def missing() -> str | None:
    """Why the v3 phases cannot run (no etcd 3.7 built), or None."""
    directory = ETCD_CACHE / V3_VERSION
    if not (os.access(directory / "etcd", os.X_OK) and os.access(directory / "etcdctl", os.X_OK)):
        return (
            f"no etcd {V3_VERSION} in {directory}: run `make etcd-test` (needs Go) for the v3 "
            "figures"
        )
    return None


class Anchor:
    """The real etcd 3.7 used as the discovery endpoint, for the whole v3 run."""

    def __init__(self, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.binary = built_etcd(V3_SERIES)
        self.discovery = ReferenceDiscovery(scratch, self.binary)

    @property
    def pid(self) -> int:
        process = self.discovery.etcd.process
        return 0 if process is None else process.pid

    def start(self) -> None:
        self.discovery.start()

    def stop(self) -> None:
        self.discovery.stop()


# -- bootstrap --------------------------------------------------------------------------------


async def bootstrap(stack: Stack, anchor: Anchor, scratch: Path, say: Say) -> dict[str, Any]:
    """Median bootstrap wall time per size and side, runs interleaved (discoverd, etcd, ...)."""
    found: dict[str, Any] = {"runs": BOOT_RUNS, "etcd_members": V3_VERSION}
    for size in BOOT_SIZES:
        times: dict[str, list[float]] = {"discoverd": [], "etcd": []}
        for run in range(BOOT_RUNS):
            for side, samples in times.items():
                where = scratch / f"boot-{size}-{side}-{run}"
                where.mkdir()
                samples.append(
                    await asyncio.to_thread(_boot_once, stack, anchor, side, size, where)
                )
        row: dict[str, Any] = {side: round(statistics.median(v), 3) for side, v in times.items()}
        row["samples"] = {side: [round(t, 3) for t in v] for side, v in times.items()}
        row["ratio"] = round(row["discoverd"] / row["etcd"], 2)
        say(f"  {size} members: discoverd {row['discoverd']:.2f} s, etcd {row['etcd']:.2f} s")
        found[str(size)] = row
    return found


def _boot_once(stack: Stack, anchor: Anchor, side: str, size: int, workdir: Path) -> float:
    if side == "etcd":
        discovery = anchor.discovery.new(size)
    else:
        discovery = V3Discovery(_new_token(stack, size), (_grpc_target(stack),))
    members = Members(workdir, Loopback(LOOPBACK_THIRD))
    try:
        names = [f"b{n}" for n in range(1, size + 1)]
        _, elapsed = start_members(members, discovery, names, anchor.binary, BOOT_TIMEOUT)
    finally:
        members.kill_all()
    return elapsed


# -- watch streams ----------------------------------------------------------------------------


async def watches(stack: Stack, anchor: Anchor, count: int, say: Say) -> dict[str, Any]:
    """The same streams and registrations on discoverd, then on the real etcd 3.7."""
    ours = await asyncio.to_thread(_new_token, stack, 3)
    theirs = (await asyncio.to_thread(anchor.discovery.new, 3)).token
    found: dict[str, Any] = {}
    for side, target, token, pid in (
        ("discoverd", _grpc_target(stack), ours, stack.pid),
        ("etcd", anchor.discovery.endpoint, theirs, anchor.pid),
    ):
        say(f"  {count:,} streams on {side}")
        found[side] = await _watch_side(target, token, pid, count, say)
    return found


async def _watch_side(target: str, token: str, pid: int, count: int, say: Say) -> dict[str, Any]:
    prefix = f"/_etcd/registry/{token}/members".encode()
    size_key = f"/_etcd/registry/{token}/_config/size".encode()
    before = rss_kb(pid)["VmRSS"]
    async with grpc.aio.insecure_channel(target) as channel:
        kv = stubs.KVStub(channel)  # type: ignore[no-untyped-call]
        header = (await kv.Range(pb.RangeRequest(key=size_key), timeout=10)).header
        ids = [f"{0xBE0C0000 + n:x}" for n in (1, 2, 3)]

        async def register() -> tuple[float, float]:
            """Three registrations, one after the other, as 3 members starting at once do:
            (when the last Put was sent, when it was acknowledged)."""
            sent = acked = 0.0
            for n, member in enumerate(ids, 1):
                key = prefix + b"/" + member.encode()
                value = f"w{n}=http://127.0.0.1:{2380 + n}".encode()
                sent = time.perf_counter()
                await kv.Put(pb.PutRequest(key=key, value=value), timeout=PUT_TIMEOUT)
                acked = time.perf_counter()
            return sent, acked

        def held() -> dict[str, Any]:
            rss = rss_kb(pid)
            say(f"    all open: server RSS {rss['VmRSS'] / 1024:.0f} MB")
            return {"rss_mb": round(rss["VmRSS"] / 1024, 1)}

        found = await v3load.watch_streams(
            target,
            prefix,
            header.revision + 1,
            count,
            WATCH_CHANNELS,
            prefix + b"/" + ids[-1].encode(),
            register,
            held,
        )
    found["rss_before_mb"] = round(before / 1024, 1)
    found["rss_peak_mb"] = round(rss_kb(pid)["VmHWM"] / 1024, 1)
    wake = found.get("wake", {})
    say(f"    wake-all p50 / max {wake.get('p50_ms', 0):.0f} / {wake.get('max_ms', 0):.0f} ms")
    return found


# -- KV/Range load ----------------------------------------------------------------------------


async def ranges(stack: Stack, anchor: Anchor, duration: float, say: Say) -> dict[str, Any]:
    """The same driver on discoverd (backed by its etcd) and on the real etcd 3.7, with the
    CPU seconds each server process used meanwhile."""
    token = await asyncio.to_thread(_new_token, stack, 3)
    theirs = (await asyncio.to_thread(anchor.discovery.new, 3)).token
    sides = (
        ("discoverd", _grpc_target(stack), token, {"discoverd": stack.pid, "etcd": stack.etcd_pid}),
        ("etcd", anchor.discovery.endpoint, theirs, {"etcd-3.7": anchor.pid}),
    )
    found: dict[str, Any] = {}
    for side, target, key_token, pids in sides:
        key = f"/_etcd/registry/{key_token}/_config/size"
        say(f"  KV/Range on {side} for {duration:g} s ({RANGE_CONCURRENCY} callers)")
        cpu = {name: sum(cpu_seconds(pid)) for name, pid in pids.items()}
        output = await run_output(
            [
                sys.executable, "-m", "bench.v3load", "range", target, key,
                "--duration", str(duration), "--concurrency", str(RANGE_CONCURRENCY),
                "--channels", str(RANGE_CHANNELS),
            ],
            duration + 60,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        result["cpu_s"] = {
            name: round(sum(cpu_seconds(pid)) - cpu[name], 2) for name, pid in pids.items()
        }
        say(f"    {result['requests_per_s']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms")
        found[side] = result
    found["ratio"] = round(
        found["discoverd"]["requests_per_s"] / max(found["etcd"]["requests_per_s"], 1e-9), 2
    )
    return found


def _grpc_target(stack: Stack) -> str:
    if stack.grpc_port is None:
        raise RuntimeError("this discoverd has no --grpc-listen (no v3 face)")
    return f"127.0.0.1:{stack.grpc_port}"


def _new_token(stack: Stack, size: int) -> str:
    request = urllib.request.Request(f"{stack.url}/new?size={size}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        return str(response.read().decode().rsplit("/", 1)[1])
