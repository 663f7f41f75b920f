"""`python -m bench [--quick]`: start etcd and one discoverd, measure, stop both, report.

discoverd runs as a user runs it (default log level and format: one JSON access line per
request, stderr to a file); the flags that differ from the defaults, and why, are in
bench.servers and in the results (server.differing_flags).

Phases, in this order (each one's failure is recorded and the next one still runs; `--dns-only`
runs only 8 and 9, `--skip-dns` all but them; `--certs-only` only 10 to 12, `--skip-certs` all
but them; `--v3-only` only 13 to 15, `--skip-v3` all but them):
  1. seed      a size-3 token with 3 real v2 registrations, so reads return real data; the v2
               anchor (etcd 3.4's v2 keys API, bench.v2anchor) started and seeded alike; with
               --go-discovery PATH, the Go discovery service in front of it (bench.goanchor)
  2. reads     wrk on GET /<token>/_config/size and GET /<token> (after a 2 s warm-up), each
               followed by the same load on the anchor's GET /v2/keys/<token>[/_config/size],
               then on the Go service's GET /<token>[/_config/size] when it runs
  3. access    the access log's cost per request: the same read load alternated between this
               discoverd and a second one on the same etcd at --log-level warning
               (bench.accesslog)
  4. wake      register->wake latency of a long-poll
  5. waits     N concurrent long-polls: server RSS, then wake-all latency
  6. drop      N long-polls again, every client gone at once: time until the server let go
  7. new       wrk on POST /new?size=3 (last: it fills the registry with tokens, which would
               inflate the RSS measured in phase 5), then on the anchor a create-only PUT of a
               fresh key per request, then POST /new?size=3 on the Go service when it runs;
               the anchors are stopped
  8. dns       dnsperf on discoverd's DNS responder: SRV (3 SRV + 3 A glue) and A of a fresh
               size-3 token, 3 runs of --duration each (bench.dnsload)
  9. dnsmasq   the same records and loads on dnsmasq, the anchor, started and stopped here
 10. certs     wrk on POST /api/v1/certs: unique peer enrollments of one P-256 CSR over
               tokens of size 999 (bench.signing)
 11. cfssl     wrk on `cfssl serve` POST /api/v1/cfssl/sign with the same CSR, the anchor,
               started and stopped here
 12. profile   only when discoverd signed fewer per second than cfssl: py-spy on discoverd
               during one more, unscored, enrollment load
 13. v3 boot   3 and 5 stock etcd 3.7 members through discoverd's v3 face, and through a real
               etcd 3.7 as the discovery endpoint, the anchor (bench.v3; needs `make etcd-test`)
 14. v3 watch  N waiting Watch streams (grpc.aio): server RSS, then wake-all latency, on
               discoverd and on the real etcd 3.7
 15. v3 range  KV/Range on a size key from a grpc.aio driver process, on discoverd and on the
               real etcd 3.7

Every phase also records the CPU seconds discoverd and etcd (and an anchor) used during it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench import (
    accesslog,
    client,
    dnsload,
    goanchor,
    load,
    report,
    servers,
    signing,
    v2anchor,
    waits,
    wake,
)
from bench import v3 as v3mod
from bench.loadspec import Load

FD_MARGIN = 256
WARMUP = 2.0  # seconds of unscored load before the reads: a fresh process warms its caches
BUSY_LOADAVG = 0.5


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    top.add_argument(
        "--quick", action="store_true", help="~20 s smoke run (3 s loads, 2,000 waits)"
    )
    top.add_argument("--duration", type=float, help="seconds per wrk or dnsperf run (10; 3 quick)")
    top.add_argument("--waits", type=int, help="concurrent waits (10,000; 2,000 with --quick)")
    top.add_argument("--iterations", type=int, help="register->wake iterations (20; 10 quick)")
    only = top.add_mutually_exclusive_group()
    only.add_argument("--skip-dns", action="store_true", help="skip the DNS phases (dnsperf)")
    only.add_argument(
        "--dns-only",
        action="store_true",
        help="only the DNS phases: discoverd, then dnsmasq, under dnsperf",
    )
    certs = top.add_mutually_exclusive_group()
    certs.add_argument(
        "--skip-certs", action="store_true", help="skip the CSR signing phases (cfssl)"
    )
    certs.add_argument(
        "--certs-only",
        action="store_true",
        help="only the CSR signing phases: discoverd, then cfssl serve, under wrk",
    )
    v3 = top.add_mutually_exclusive_group()
    v3.add_argument("--skip-v3", action="store_true", help="skip the v3 discovery (gRPC) phases")
    v3.add_argument(
        "--v3-only",
        action="store_true",
        help="only the v3 discovery phases: bootstrap, watch streams, KV/Range vs a real etcd 3.7",
    )
    top.add_argument(
        goanchor.FLAG,
        metavar="PATH",
        dest="go_discovery",
        help="also measure the v2 HTTP loads on this build of the Go discovery service "
        f"(coreos/discovery.etcd.io) in front of the etcd 3.4 anchor (default: ${goanchor.ENV})",
    )
    return top


def _plan(args: argparse.Namespace) -> tuple[bool, bool, bool, bool]:
    """Whether the HTTP, DNS, certificate and v3 phases run."""
    onlys = [name for name in ("dns_only", "certs_only", "v3_only") if getattr(args, name)]
    if len(onlys) > 1:
        flags = " and ".join("--" + name.replace("_", "-") for name in onlys)
        parser().error(f"{flags} exclude each other")
    http = not onlys
    dns = not args.skip_dns and not (args.certs_only or args.v3_only)
    certs = not args.skip_certs and not (args.dns_only or args.v3_only)
    v3 = not args.skip_v3 and not (args.dns_only or args.certs_only)
    return http, dns, certs, v3


def go_discovery(args: argparse.Namespace) -> Path | None:
    """The Go discovery service's binary (the flag's, else $DISCOVERD_BENCH_GO_DISCOVERY's), or
    None; a path given that cannot be run stops the bench before anything starts."""
    path = goanchor.given(args.go_discovery, os.environ)
    if path is None:
        return None
    why = goanchor.unusable(path)
    if why is not None:
        parser().error(why)
    return Path(path).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    http, dns, certs, v3 = _plan(args)
    go = go_discovery(args)
    duration = args.duration or (3.0 if args.quick else 10.0)
    iterations = args.iterations or (10 if args.quick else 20)
    soft, _ = servers.raise_nofile()  # before any child starts: they inherit it
    count = min(args.waits or (2_000 if args.quick else 10_000), soft - FD_MARGIN)
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "-m", "bench", *(argv or sys.argv[1:])]),
        "cwd": str(Path.cwd()),
        "quick": args.quick,
        "machine": report.machine(),
        "load_tool": "wrk" if load.wrk_path() else "aiohttp fallback (wrk not installed)",
        "nofile_limit": soft,
        "throughput": {},
    }
    if dns:
        results["dns"] = _dns_plan(duration)
    if certs:
        results["certs"] = signing.plan(duration)
    if v3:
        results["v3"] = _v3_plan()
    if results["machine"]["loadavg_at_start"][0] > BUSY_LOADAVG:
        _say(f"note: load average {results['machine']['loadavg_at_start'][0]}: numbers will be low")
    if load.wrk_path() is None:
        _say("wrk is not installed: falling back to the aiohttp load generator (a floor)")
    status = 0
    with tempfile.TemporaryDirectory(prefix="discoverd-bench-") as scratch:
        stack = servers.Stack(Path(scratch), wait_timeout="120s")
        try:
            _say("starting etcd and discoverd")
            stack.start()
            results["versions"] = _versions(stack)
            results["server"] = {
                "pid": stack.pid,
                "command": shlex.join(stack.command),
                "log_level": "the default (info: one JSON access line per request)",
                "differing_flags": stack.differing,
                "nofile_limit": stack.server_limits(),
            }
            phases = _Phases(stack, Path(scratch), duration, iterations, count, results)
            phases.http, phases.dns, phases.certs, phases.v3 = http, dns, certs, v3
            phases.go_binary = go
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(phases.all())
        except (KeyboardInterrupt, asyncio.CancelledError):
            _say("interrupted: stopping etcd and discoverd")
            results["interrupted"] = True
            status = 130
        except servers.StackError as exc:
            _say(f"cannot start: {exc}")
            results["error"] = str(exc)
            status = 1
        finally:
            stack.stop()
            logged = results.setdefault("server", {})
            logged["log"] = stack.log_problems()
            logged["log_bytes"] = stack.log_size()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["loadavg_at_end"] = [round(load, 2) for load in os.getloadavg()]
    rows = report.verdicts(results)
    results["verdicts"] = rows
    stamped, _ = report.write(results)
    if results.get("interrupted"):
        print("(interrupted: partial results)")
    print(report.markdown(rows))
    print(f"\nresults: {stamped} (and latest.json); machine: {_machine_line(results)}")
    return status


class _Phases:
    def __init__(
        self,
        stack: servers.Stack,
        scratch: Path,
        duration: float,
        iterations: int,
        count: int,
        results: dict[str, Any],
    ) -> None:
        self.stack = stack
        self.base = stack.url
        self.scratch = scratch
        self.duration = duration
        self.iterations = iterations
        self.count = count
        self.results = results
        self.http = True
        self.dns = True
        self.certs = True
        self.v3 = True
        self.run_id = secrets.token_hex(4)  # the anchor's fresh keys are unique per run
        self.anchor_token = ""
        self.go_binary: Path | None = None

    async def all(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        if self.http:
            await self._http()
        if self.dns:
            await self._dns()
        if self.certs:
            await self._certs()
        if self.v3:
            await self._v3()
        async with aiohttp.ClientSession() as session:
            samples = await client.metrics(session, self.base)
        self.results["server"]["requests"] = client.status_counts(samples)
        self.results["server"]["etcd_errors"] = client.metric_value(
            samples, "discoverd_etcd_errors_total"
        )

    async def _http(self) -> None:
        token = await self._seed()
        reads = {"get_size": f"/{token}/_config/size", "get_dir": f"/{token}"}
        anchor = await self._start_anchor(token)
        go = await self._start_go_anchor(anchor, token)
        try:
            await self._throughput("warmup", reads["get_size"], "GET", WARMUP)
            await self._anchor_load(anchor, "get_size", WARMUP, "warmup")
            await self._go_load(go, anchor, "get_size", WARMUP, "warmup")
            for name, path in reads.items():
                await self._throughput(name, path, "GET")
                await self._anchor_load(anchor, name)
                await self._go_load(go, anchor, name)
            await self._phase(
                "access_log",
                "access-log cost: GET /<token>/_config/size on this discoverd (info) and on a "
                f"second one at --log-level warning, {accesslog.ROUNDS} rounds",
                lambda: accesslog.cost(self.stack, token, self.scratch, self.duration, _say),
            )
            await self._phase("register_wake", f"register->wake x{self.iterations}", self._wake)
            await self._phase("waits", f"{self.count:,} concurrent waits", self._waits)
            await self._phase("disconnect", f"{self.count:,} waits dropped at once", self._drop)
            await self._throughput("new", "/new?size=3", "POST")
            await self._anchor_load(anchor, "new")
            await self._go_load(go, anchor, "new")
        finally:
            if go is not None:
                await asyncio.to_thread(go.stop)
            if anchor is not None:
                await asyncio.to_thread(anchor.stop)

    async def _start_anchor(self, token: str) -> v2anchor.EtcdV2 | None:
        """etcd 3.4's v2 API seeded like discoverd, for the v2 ratios; None when it cannot run
        (why is in the results)."""
        path = v2anchor.binary()
        why = v2anchor.missing() or (
            None if load.wrk_path() else "wrk is not installed (the anchor loads need wrk)"
        )
        if why is not None or path is None:
            _say(f"v2 anchor skipped: {why}")
            self.results["anchor_v2"] = {"skipped": why}
            return None
        _say(f"starting the v2 anchor: etcd {v2anchor.version(path)} with --enable-v2, seeded")
        try:
            anchor, info = await v2anchor.start(path, self.scratch / "v2-anchor", token)
        except Exception as exc:  # the other phases' results still count
            _say(f"  failed: {type(exc).__name__}: {exc}")
            self.results["anchor_v2"] = {"error": f"{type(exc).__name__}: {exc}"}
            return None
        self.results["anchor_v2"] = info | {"pid": anchor.pid, "throughput": {}}
        self.anchor_token = token
        return anchor

    async def _anchor_load(
        self, anchor: v2anchor.EtcdV2 | None, name: str, duration: float = 0.0, key: str = ""
    ) -> None:
        """The anchor's counterpart of discoverd's load `name`, stored under `key` (`name`)."""
        if anchor is None:
            return
        spec = v2anchor.load(
            name, anchor.url, self.anchor_token, duration or self.duration, self.run_id
        )
        found = await self._measure(spec, key or name, {"etcd-3.4": anchor.pid})
        if "path" in found:
            found["path"] = v2anchor.shown_path(name, found["path"])
        self.results["anchor_v2"]["throughput"][key or name] = found

    async def _start_go_anchor(
        self, anchor: v2anchor.EtcdV2 | None, token: str
    ) -> goanchor.GoDiscovery | None:
        """The Go discovery service in front of the etcd anchor, seeded for `token`; None when
        it was not given or cannot run (why is in the results)."""
        if self.go_binary is None or anchor is None:
            why = goanchor.NOT_GIVEN if self.go_binary is None else goanchor.NO_ETCD
            _say(f"Go discovery anchor {why}")
            self.results["anchor_go"] = {"skipped": why}
            return None
        _say(f"starting the Go discovery anchor ({self.go_binary}) in front of etcd 3.4, seeded")
        try:
            go, info = await goanchor.start(
                self.go_binary, self.scratch / "go-anchor", anchor.url, token
            )
        except Exception as exc:  # the other phases' results still count
            _say(f"  failed: {type(exc).__name__}: {exc}")
            self.results["anchor_go"] = {"error": f"{type(exc).__name__}: {exc}"}
            return None
        self.results["anchor_go"] = info | {"pid": go.pid, "throughput": {}}
        return go

    async def _go_load(
        self,
        go: goanchor.GoDiscovery | None,
        anchor: v2anchor.EtcdV2 | None,
        name: str,
        duration: float = 0.0,
        key: str = "",
    ) -> None:
        """The Go service's counterpart of discoverd's load `name`, stored under `key`."""
        if go is None or anchor is None:
            return
        spec = goanchor.load(name, go.url, self.anchor_token, duration or self.duration)
        pids = {"go-discovery": go.pid, "etcd-3.4": anchor.pid}
        found = await self._measure(spec, key or name, pids)
        self.results["anchor_go"]["throughput"][key or name] = found

    async def _dns(self) -> None:
        """discoverd's responder, then dnsmasq with the same records, under dnsperf."""
        plan = self.results["dns"]
        if "skipped" in plan:
            _say(f"DNS phases skipped: {plan['skipped']}")
            return
        runs, duration = plan["runs"], plan["duration_s"]
        each = f"SRV and A, {runs} x {duration:g} s each"

        async def discoverd() -> dict[str, Any]:
            return await dnsload.discoverd_side(self.stack, self.scratch, duration, runs, _say)

        async def dnsmasq() -> dict[str, Any]:
            return await dnsload.dnsmasq_side(self.scratch, duration, runs, _say)

        for name, body in (("discoverd", discoverd), ("dnsmasq", dnsmasq)):
            plan[name] = found = await self._run(f"DNS on {name} ({each})", body)
            if "skipped" in found:
                _say(f"  skipped: {found['skipped']}")

    async def _certs(self) -> None:
        """discoverd's enrollments, then cfssl serve's signings, under wrk; then py-spy on
        discoverd if it signed fewer per second than cfssl."""
        plan, duration = self.results["certs"], self.duration

        async def discoverd() -> dict[str, Any]:
            return await signing.discoverd_side(self.stack, self.scratch, duration, _say)

        async def cfssl() -> dict[str, Any]:
            return await signing.cfssl_side(self.scratch, duration, _say)

        tool = "wrk -t2 -c32" if load.wrk_path() else "aiohttp fallback, 32 connections"
        what = f"for {duration:g} s, {tool}"
        plan["discoverd"] = await self._run(f"CSR signings on discoverd ({what})", discoverd)
        interleaved = plan["discoverd"].get("signings_per_s")
        if interleaved:

            async def one_token() -> dict[str, Any]:
                return await signing.one_token_side(self.stack, self.scratch, interleaved, _say)

            plan["one_token"] = await self._run(
                "CSR signings on discoverd, 16 concurrent enrollments in one token", one_token
            )
        plan["cfssl"] = found = await self._run(f"CSR signings on cfssl serve ({what})", cfssl)
        if "skipped" in found:
            _say(f"  skipped: {found['skipped']}")
        ours = plan["discoverd"].get("signings_per_s")
        anchor = plan["cfssl"].get("signings_per_s")
        if ours is None or not anchor or ours >= anchor:
            return

        async def profile() -> dict[str, Any]:
            return await signing.profile_discoverd(self.stack, self.scratch, duration, ours, _say)

        ratio = ours / anchor
        plan["profile"] = found = await self._run(
            f"discoverd signs {ratio:.2f}{report.TIMES} cfssl: profiling it (py-spy, unscored)",
            profile,
        )
        if "skipped" in found:
            _say(f"  skipped: {found['skipped']}")
        for row in found.get("by_thread", []):
            _say(f"    {row['pct']:5.1f}%  {row['what']}")
        _say("  by innermost discoverd function:")
        for row in found.get("by_innermost_discoverd_function", [])[:6]:
            _say(f"    {row['pct']:5.1f}%  {row['what']}")

    async def _v3(self) -> None:
        """Last: its 10,000 streams would inflate the RSS the HTTP waits phase measures (the
        v3 rows show the RSS the streams added, too)."""
        plan = self.results["v3"]
        if "skipped" in plan:
            _say(f"v3 phases skipped: {plan['skipped']}")
            return
        anchor = v3mod.Anchor(self.scratch / "v3-anchor")
        _say(f"starting the anchor: a real etcd {v3mod.V3_VERSION} as the discovery endpoint")
        try:
            try:
                await asyncio.to_thread(anchor.start)
            except Exception as exc:  # the other phases' results still count
                _say(f"  failed: {type(exc).__name__}: {exc}")
                plan["error"] = f"the anchor etcd did not start: {type(exc).__name__}: {exc}"
                return
            boots = " and ".join(str(size) for size in v3mod.BOOT_SIZES)
            plan["bootstrap"] = await self._run(
                f"v3 bootstrap of {boots} etcd {v3mod.V3_VERSION} members, discoverd vs etcd, "
                f"{v3mod.BOOT_RUNS} runs each",
                lambda: v3mod.bootstrap(self.stack, anchor, self.scratch, _say),
            )
            plan["watches"] = await self._run(
                f"{self.count:,} v3 watch streams on one token: discoverd, then etcd",
                lambda: v3mod.watches(self.stack, anchor, self.count, _say),
            )
            plan["range"] = await self._run(
                "KV/Range on a size key: discoverd, then etcd",
                lambda: v3mod.ranges(self.stack, anchor, self.duration, _say),
            )
        finally:
            await asyncio.to_thread(anchor.stop)

    async def _seed(self) -> str:
        async with aiohttp.ClientSession() as session:
            token = await client.new_token(session, self.base, 3)
            for n in (1, 2, 3):
                await client.register(session, self.base, token, f"{0xBE0C0000 + n:x}", n)
        return token

    async def _throughput(
        self, name: str, path: str, method: str, duration: float | None = None
    ) -> None:
        spec = Load(name, f"{self.base}{path}", method, duration or self.duration)
        self.results["throughput"][name] = await self._measure(spec, name)

    async def _measure(
        self, spec: Load, name: str, more: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """One wrk load, with the CPU µs per request of each server process."""

        async def measure() -> dict[str, Any]:
            return (await load.measure(spec, self.scratch)).as_dict()

        what = f"{spec.method} {spec.path} for {spec.duration:g} s" + (
            " (warm-up, not scored)" if name == "warmup" else ""
        )
        found = await self._run(what, measure, more)
        if found.get("requests"):
            found["cpu_us_per_request"] = {
                process: round(seconds / found["requests"] * 1e6, 1)
                for process, seconds in found["cpu_s"].items()
                if process != "wall"
            }
            found["discoverd_cpu_us_per_request"] = found["cpu_us_per_request"]["discoverd"]
        return found

    async def _phase(
        self, name: str, what: str, body: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        self.results[name] = await self._run(what, body)

    async def _run(
        self,
        what: str,
        body: Callable[[], Awaitable[dict[str, Any]]],
        more: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        _say(what)
        pids = {"discoverd": self.stack.pid, "etcd": self.stack.etcd_pid, **(more or {})}
        cpu = {name: sum(servers.cpu_seconds(pid)) for name, pid in pids.items()}
        started = time.monotonic()
        try:
            found = await body()
        except Exception as exc:  # one failed phase must not lose the others
            _say(f"  failed: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}
        wall = time.monotonic() - started
        found["cpu_s"] = {
            name: round(sum(servers.cpu_seconds(pid)) - cpu[name], 2) for name, pid in pids.items()
        }
        found["cpu_s"]["wall"] = round(wall, 2)
        _say(f"  done in {wall:.1f} s")
        return found

    async def _wake(self) -> dict[str, Any]:
        return (await wake.register_wake(self.base, self.iterations)).as_dict()

    async def _waits(self) -> dict[str, Any]:
        return await waits.concurrent_waits(self.base, self.stack.pid, self.count)

    async def _drop(self) -> dict[str, Any]:
        return await waits.disconnect_all(self.base, self.count)


def _dns_plan(duration: float) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "runs": dnsload.RUNS,
        "duration_s": duration,
        "dnsperf": dnsload.dnsperf_info(),
    }
    if plan["dnsperf"]["path"] is None:
        plan["skipped"] = "dnsperf not installed (Debian dnsperf; `make bench` installs it as root)"
    return plan


def _v3_plan() -> dict[str, Any]:
    why = v3mod.missing()
    return {"skipped": why} if why else {"etcd": v3mod.V3_VERSION}


def _versions(stack: servers.Stack) -> dict[str, str]:
    status, health = servers.get_json(f"{stack.url}/health")
    return {
        "discoverd": str(health.get("version", "unknown")) if status == 200 else "unknown",
        "etcd": stack.etcd_version(),
        "etcd_binary": str(stack.etcd.binary),
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = results.get("versions", {})
    dnsperf = results.get("dns", {}).get("dnsperf", {}).get("version")
    cfssl = results.get("certs", {}).get("cfssl", {}).get("version")
    return (
        f"{m['nproc']} CPUs ({m['cpu_model']}), discoverd {v.get('discoverd', '?')}, "
        f"etcd {v.get('etcd', '?')}, {results['load_tool']}"
        + (f", dnsperf {dnsperf}" if dnsperf else "")
        + (f", cfssl {cfssl}" if cfssl else "")
    )
