"""DNS throughput with dnsperf: discoverd's responder, then dnsmasq (the anchor) serving the same
three SRV records with A glue, in the same run, one after the other.

On each server two loads are measured, each `RUNS` dnsperf runs of `duration` seconds over UDP
(no EDNS, as dnsperf sends by default):

    srv   _etcd-server._tcp.<domain> SRV   3 SRV answers + 3 A glue records
    a     etcd1.<domain> A                 1 A answer

`<domain>` is `<label>.etcd.internal` on discoverd (the label of a size-3 token with 3 real v2
registrations, etcd1..3 at http://10.0.0.1..3:2380: record data only, never contacted) and
`example.test` on dnsmasq (`srv-host` and `host-record` lines of a generated config). Before
any load, one dnspython query per load checks the answer (3 SRV + 3 glue, or the one A) and the
load fails loudly when it is not there. A load reports the median run's QPS, the average
latency, queries lost, the request and response sizes, and the server's CPU per query.

dnsperf or dnsmasq missing: that part is skipped and says so (`make bench` installs both with
apt when root). Only loopback; dnsmasq and every dnsperf are stopped by pid (bench.process).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

from bench import client, servers
from bench.process import ManagedProcess, run_output
from discoverd.directory.rules import cluster_label

RUNS = 3
DNSPERF_CLIENTS = 1  # -c: one UDP socket, as one resolver would use
DNSPERF_OUTSTANDING = 100  # -q: dnsperf's default window of queries in flight
DNSPERF_TIMEOUT_S = 2  # -t: a query unanswered this long counts as lost
DNSPERF_GRACE = 30.0  # dnsperf gets its duration plus this before it is killed
CHECK_TIMEOUT = 15.0  # the zone follows the registry through the etcd watch: poll, bounded
QUERY_TIMEOUT = 1.0
POLL_INTERVAL = 0.05
MEMBERS = 3
DNSMASQ_DOMAIN = "example.test"
TARGET_RATIO = 0.5  # discoverd's target: at least half of dnsmasq's QPS

_TOKEN = re.compile(r"[0-9a-f]{32}")
_FLOAT = r"([\d.]+)"
_PATTERNS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "queries_per_s": re.compile(rf"Queries per second:\s+{_FLOAT}"),
    "run_time_s": re.compile(rf"Run time \(s\):\s+{_FLOAT}"),
}
_SIZES = re.compile(r"Average packet size:\s+request (\d+), response (\d+)")
_LATENCY = re.compile(rf"Average Latency \(s\):\s+{_FLOAT} \(min {_FLOAT}, max {_FLOAT}\)")
_RCODES = re.compile(r"Response codes:\s+(.*)")
_RCODE = re.compile(r"([A-Z]+) (\d+) \(")
_VERSION = re.compile(r"^Version (\S+)", re.M)


class DnsCheckError(RuntimeError):
    """A server did not answer the records the bench published."""


def tool_path(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories a non-root PATH may lack (dnsmasq)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_version(binary: str, flag: str) -> str:
    """The first line of `binary flag` that names a version, else 'unknown'."""
    try:
        done = subprocess.run(
            [binary, flag], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (done.stdout + done.stderr).splitlines():
        if "version" in line.lower():
            return line.strip()
    return "unknown"


@dataclass(frozen=True)
class DnsLoad:
    """What to measure: `qname qtype` against 127.0.0.1:`port` for `duration` s, `runs` times."""

    name: str
    qname: str
    qtype: str
    port: int
    duration: float
    runs: int = RUNS

    @property
    def shown(self) -> str:
        """`qname qtype` with any token replaced by `<token>` (tokens are secrets)."""
        return _TOKEN.sub("<token>", f"{self.qname} {self.qtype}")


@dataclass
class DnsperfRun:
    """The numbers of one dnsperf report."""

    queries_per_s: float
    sent: int
    completed: int
    lost: int
    run_time_s: float
    avg_latency_ms: float
    min_latency_ms: float
    max_latency_ms: float
    request_bytes: int
    response_bytes: int
    rcodes: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    server_sys_cpu_s: float = 0.0  # of server_cpu_s, in the kernel (the UDP path)
    dnsperf_cpu_s: float = 0.0


def parse_dnsperf(text: str) -> DnsperfRun:
    """One dnsperf statistics report; RuntimeError when its totals are missing."""
    found: dict[str, float] = {}
    for key, pattern in _PATTERNS.items():
        match = pattern.search(text)
        if match is None:
            raise RuntimeError(f"cannot parse dnsperf output ({key}): {text[-500:]}")
        found[key] = float(match.group(1))
    sizes = _SIZES.search(text)
    latency = _LATENCY.search(text)
    rcodes = _RCODES.search(text)
    avg, low, high = (float(v) * 1000 for v in latency.groups()) if latency else (0.0, 0.0, 0.0)
    return DnsperfRun(
        queries_per_s=round(found["queries_per_s"], 1),
        sent=int(found["sent"]),
        completed=int(found["completed"]),
        lost=int(found["lost"]),
        run_time_s=round(found["run_time_s"], 3),
        avg_latency_ms=round(avg, 3),
        min_latency_ms=round(low, 3),
        max_latency_ms=round(high, 3),
        request_bytes=int(sizes.group(1)) if sizes else 0,
        response_bytes=int(sizes.group(2)) if sizes else 0,
        rcodes={code: int(n) for code, n in _RCODE.findall(rcodes.group(1))} if rcodes else {},
    )


async def run_dnsperf(dnsperf: str, load: DnsLoad, scratch: Path, server_pid: int) -> DnsperfRun:
    """One dnsperf run of `load`, with the CPU the server and dnsperf spent during it."""
    data = scratch / f"dnsperf-{load.name}-{load.port}.txt"
    data.write_text(f"{load.qname} {load.qtype}\n")
    command = _dnsperf_command(dnsperf, load, data)
    user_before, sys_before = servers.cpu_seconds(server_pid)
    children_before = _children_cpu()
    text = await run_output(
        command, load.duration + DNSPERF_GRACE, stdin=asyncio.subprocess.DEVNULL
    )
    found = parse_dnsperf(text)
    user_after, sys_after = servers.cpu_seconds(server_pid)
    found.server_cpu_s = round(user_after + sys_after - user_before - sys_before, 2)
    found.server_sys_cpu_s = round(sys_after - sys_before, 2)
    found.dnsperf_cpu_s = round(_children_cpu() - children_before, 2)
    return found


def _dnsperf_command(dnsperf: str, load: DnsLoad, data: Path) -> list[str]:
    return [
        dnsperf,
        "-s",
        "127.0.0.1",
        "-p",
        str(load.port),
        "-d",
        str(data),
        "-l",
        f"{load.duration:g}",
        "-c",
        str(DNSPERF_CLIENTS),
        "-T",
        "1",
        "-q",
        str(DNSPERF_OUTSTANDING),
        "-t",
        str(DNSPERF_TIMEOUT_S),
    ]


def _children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children (dnsperf, once it ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(dnsperf: str, load: DnsLoad, scratch: Path, server_pid: int) -> dict[str, Any]:
    """`load.runs` dnsperf runs of `load`: the median run's QPS and every run's numbers."""
    runs = [await run_dnsperf(dnsperf, load, scratch, server_pid) for _ in range(load.runs)]
    qps = [run.queries_per_s for run in runs]
    median_qps = statistics.median(qps)
    completed = sum(run.completed for run in runs)
    server_cpu = sum(run.server_cpu_s for run in runs)
    server_sys = sum(run.server_sys_cpu_s for run in runs)
    rcodes: dict[str, int] = {}
    for run in runs:
        for code, count in run.rcodes.items():
            rcodes[code] = rcodes.get(code, 0) + count
    last = runs[-1]
    return {
        "query": load.shown,
        "transport": "udp",
        "runs": load.runs,
        "duration_s": load.duration,
        "queries_per_s": round(median_qps, 1),
        "qps_runs": qps,
        "avg_latency_ms": round(statistics.median(run.avg_latency_ms for run in runs), 3),
        "max_latency_ms": max(run.max_latency_ms for run in runs),
        "sent": sum(run.sent for run in runs),
        "completed": completed,
        "lost": sum(run.lost for run in runs),
        "request_bytes": last.request_bytes,
        "response_bytes": last.response_bytes,
        "rcodes": rcodes,
        "server_cpu_s": round(server_cpu, 2),
        "server_sys_cpu_s": round(server_sys, 2),
        "server_cpu_us_per_query": round(server_cpu / completed * 1e6, 2) if completed else None,
        "dnsperf_cpu_s": round(sum(run.dnsperf_cpu_s for run in runs), 2),
        "command": _TOKEN.sub("<token>", " ".join(_dnsperf_command("dnsperf", load, Path("-")))),
        "per_run": [asdict(run) for run in runs],
    }


async def query(port: int, qname: str, qtype: str) -> dns.message.Message:
    """One UDP query (no EDNS, as dnsperf sends it) to 127.0.0.1:`port`."""
    message = dns.message.make_query(qname, qtype, use_edns=False)
    return await dns.asyncquery.udp(message, "127.0.0.1", timeout=QUERY_TIMEOUT, port=port)


def _count(section: list[Any], rdtype: dns.rdatatype.RdataType) -> int:
    return sum(len(rrset) for rrset in section if rrset.rdtype == rdtype)


def _srv_ok(response: dns.message.Message) -> bool:
    answers = _count(response.answer, dns.rdatatype.SRV)
    glue = _count(response.additional, dns.rdatatype.A)
    return response.rcode() == 0 and answers == MEMBERS and glue == MEMBERS


def _a_ok(response: dns.message.Message) -> bool:
    addresses = [
        rr.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
    ]
    return response.rcode() == 0 and addresses == ["10.0.0.1"]


async def check(load: DnsLoad, alive: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Poll `load`'s query until its answer holds the published records (3 SRV + 3 A glue, or
    10.0.0.1); DnsCheckError, with the last answer, when it does not within CHECK_TIMEOUT."""
    wanted = _srv_ok if load.qtype == "SRV" else _a_ok
    deadline = time.monotonic() + CHECK_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise DnsCheckError(f"{load.shown}: the server exited")
        try:
            response = await query(load.port, load.qname, load.qtype)
        except (dns.exception.DNSException, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if wanted(response):
                rdtype = dns.rdatatype.from_text(load.qtype)
                return {
                    "query": load.shown,
                    "answer": _count(response.answer, rdtype),
                    "glue": _count(response.additional, dns.rdatatype.A),
                    "response_bytes": len(response.to_wire()),
                }
            last = _TOKEN.sub("<token>", response.to_text())
        await asyncio.sleep(POLL_INTERVAL)
    raise DnsCheckError(
        f"{load.shown} on 127.0.0.1:{load.port} did not answer the published records "
        f"within {CHECK_TIMEOUT:.0f} s; last answer: {last[:600]}"
    )


async def _measure_both(
    dnsperf: str, loads: list[DnsLoad], scratch: Path, pid: int, say: Callable[[str], None]
) -> dict[str, Any]:
    found: dict[str, Any] = {"checks": {}, "loads": {}}
    for load in loads:
        found["checks"][load.name] = await check(load)
    for load in loads:
        say(f"  dnsperf {load.shown}: {load.runs} x {load.duration:g} s")
        found["loads"][load.name] = await measure(dnsperf, load, scratch, pid)
        result = found["loads"][load.name]
        say(
            f"    {result['queries_per_s']:,.0f} qps (runs {result['qps_runs']}), "
            f"{result['lost']} lost"
        )
    return found


def _loads(domain: str, port: int, duration: float, runs: int) -> list[DnsLoad]:
    return [
        DnsLoad("srv", f"_etcd-server._tcp.{domain}", "SRV", port, duration, runs),
        DnsLoad("a", f"etcd1.{domain}", "A", port, duration, runs),
    ]


async def seed(base: str, size: int = MEMBERS) -> str:
    """A size-3 token with etcd1..3 registered at http://10.0.0.1..3:2380 (v2, create-only)."""
    async with aiohttp.ClientSession() as session:
        token = await client.new_token(session, base, size)
        for n in range(1, size + 1):
            value = f"etcd{n}=http://10.0.0.{n}:2380"
            await client.register(session, base, token, f"{0xD0500000 + n:x}", n, value)
    return token


async def discoverd_side(
    stack: servers.Stack, scratch: Path, duration: float, runs: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Seed a token, check its SRV and A answers, then dnsperf discoverd's responder."""
    dnsperf = tool_path("dnsperf")
    if dnsperf is None:
        return {"skipped": "dnsperf not installed (Debian: dnsperf)"}
    if stack.dns_port is None:
        return {"skipped": "this discoverd has no --dns-listen"}
    token = await seed(stack.url)
    loads = _loads(f"{cluster_label(token)}.{stack.dns_zone}", stack.dns_port, duration, runs)
    found = await _measure_both(dnsperf, loads, scratch, stack.pid, say)
    return {"server": "discoverd", "port": stack.dns_port, "zone": stack.dns_zone, **found}


async def dnsmasq_side(
    scratch: Path, duration: float, runs: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Start dnsmasq with the same records under example.test, dnsperf it, stop it."""
    dnsperf = tool_path("dnsperf")
    if dnsperf is None:
        return {"skipped": "dnsperf not installed (Debian: dnsperf)"}
    binary = tool_path("dnsmasq")
    if binary is None:
        return {"skipped": "dnsmasq not installed (Debian: dnsmasq-base)"}
    dnsmasq = Dnsmasq(binary, scratch / "dnsmasq")
    try:
        dnsmasq.start()
        loads = _loads(DNSMASQ_DOMAIN, dnsmasq.port, duration, runs)
        for load in loads:  # dnsmasq answers once it has read its config: poll until it does
            await check(load, alive=dnsmasq.alive)
        found = await _measure_both(dnsperf, loads, scratch, dnsmasq.pid, say)
    finally:
        dnsmasq.stop()
    return {
        "server": "dnsmasq",
        "version": tool_version(binary, "--version"),
        "port": dnsmasq.port,
        "command": " ".join(dnsmasq.command),
        "log": dnsmasq.log_tail(),
        **found,
    }


class Dnsmasq(ManagedProcess):
    """dnsmasq in the foreground on 127.0.0.1:<free port>, with only the bench's records."""

    name = "dnsmasq"  # stopped within process.STOP_TIMEOUT (10 s)

    def __init__(self, binary: str, folder: Path) -> None:
        super().__init__(folder / "dnsmasq.log")
        self.binary = binary
        self.folder = folder
        self.port = 0

    def config(self) -> str:
        lines = []
        for n in range(1, MEMBERS + 1):
            host = f"etcd{n}.{DNSMASQ_DOMAIN}"
            lines.append(f"srv-host=_etcd-server._tcp.{DNSMASQ_DOMAIN},{host},2380,0,100")
            lines.append(f"host-record={host},10.0.0.{n}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "dnsmasq.conf"
        conf.write_text(self.config())
        self.port = servers.free_dns_port()
        self.command = [
            self.binary,
            "--no-daemon",  # stay in the foreground: the pid we hold is dnsmasq's
            "--no-resolv",  # no upstreams: it answers only from its config
            "--no-hosts",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--conf-file={conf}",
            "--pid-file=",  # no pid file
            # stay this user: dropping root to nobody would clear die_with_parent's
            # PR_SET_PDEATHSIG (and a non-root dnsmasq changes no user anyway)
            f"--user={pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        self.launch()


def dnsperf_info() -> dict[str, Any]:
    """Which dnsperf, its version and the options every run uses."""
    dnsperf = tool_path("dnsperf")
    return {
        "path": dnsperf,
        "version": _dnsperf_version(dnsperf) if dnsperf else None,
        "clients": DNSPERF_CLIENTS,
        "threads": 1,
        "outstanding": DNSPERF_OUTSTANDING,
        "timeout_s": DNSPERF_TIMEOUT_S,
        "edns": False,
    }


def _dnsperf_version(dnsperf: str) -> str:
    try:
        done = subprocess.run(
            [dnsperf, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = _VERSION.search(done.stdout + done.stderr)
    return match.group(1) if match else "unknown"
