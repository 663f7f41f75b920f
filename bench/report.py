"""Where a bench run's results go: the machine it ran on, the JSON files under bench/results/,
and the Markdown table (metric | discoverd | anchor | target) printed to stdout.

The v2 HTTP anchor is etcd 3.4's own v2 keys API (Debian's etcd-server, `--enable-v2`), which
the public Go discovery service proxies every request to, seeded alike and measured under the
same wrk load in the same run (bench.v2anchor): each v2 figure is a ratio to it. The issue's
goals (reads at least 3 times, /new twice the Go service's req/s) were set against the Go
service, which is slower than raw etcd: a ratio that meets them against raw etcd meets them,
one below is not judged. When the run is given a build of the Go service itself
(`--go-discovery PATH`, bench.goanchor), it runs in front of that etcd 3.4 under the same loads,
each v2 figure also shows its ratio to it, and the goals are judged on that ratio (met or not);
otherwise a row says it was not run. The access log's cost is discoverd against itself at
--log-level warning (bench.accesslog). The DNS anchor is dnsmasq serving the same records,
measured by dnsperf in the same run (bench.dnsload). The CSR signing anchor is `cfssl serve`
(Debian's golang-cfssl 1.2.0) signing the same P-256 CSR under the same wrk load in the same run
(bench.signing). The v3 discovery anchor is a real etcd 3.7 used as the discovery endpoint, in
the same run (bench.v3, rows in bench.v3report).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import v3report

RESULTS_DIR = Path(__file__).resolve().parent / "results"

RSS_TARGET_MB = 300.0
RSS_TARGET_WAITS = 10_000

TIMES = "\N{MULTIPLICATION SIGN}"
DNS_TARGET_RATIO = 0.5  # discoverd's DNS QPS target: half of dnsmasq's, measured in the same run
# DNS load name -> row label
DNS_LOADS = {"srv": "DNS SRV", "a": "DNS A"}
DNS_QPS_LABELS = {"srv": "DNS SRV qps (3 SRV + 3 A glue)", "a": "DNS A qps"}

CERTS_TARGET_RATIO = 1.0  # discoverd's signings/s target: cfssl's, measured in the same run
CERTS_LABEL = "CSR signings/s (POST /api/v1/certs, P-256, peer)"
CERTS_ANCHOR = "cfssl serve /api/v1/cfssl/sign"
PROFILE_ROWS = 4  # innermost discoverd functions shown in the table

# load name -> the goal: discoverd / the Go discovery service
GOALS = {"get_size": 3.0, "get_dir": 3.0, "new": 2.0}
GO_PROCESSES = ("go-discovery", "etcd-3.4")  # the CPU the Go anchor's requests cost


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _wrk_version(),
        # Anything else running on these 2 cores skews every number: look here first.
        "loadavg_at_start": [round(load, 2) for load in os.getloadavg()],
    }


def _wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    try:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "unknown"


def write(results: dict[str, Any]) -> tuple[Path, Path]:
    """bench/results/<UTC timestamp>.json and bench/results/latest.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    stamped = RESULTS_DIR / f"{stamp}.json"
    latest = RESULTS_DIR / "latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: what discoverd did, the anchor, the target, and whether it met it."""
    rows: list[dict[str, Any]] = []
    anchor, go = results.get("anchor_v2", {}), results.get("anchor_go")
    for name, load in results.get("throughput", {}).items():
        if name == "warmup":
            continue
        rows.extend(throughput_verdicts(name, load, anchor, go or {}))
    if go is not None:
        rows.append(go_anchor_row(go))
    if "access_log" in results:
        rows.extend(access_log_verdicts(results["access_log"]))
    wake = results.get("register_wake", {})
    if "wake" in wake:
        w = wake["wake"]
        value = f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f} / {w['max_ms']:.1f} ms"
        rows.append(_row("register→wake p50 / p99 / max", value, "—", "—", met=None))
    waits = results.get("waits", {})
    if "rss_held_mb" in waits:
        count = waits["target"]
        full = count >= RSS_TARGET_WAITS
        rss_target = f"< {RSS_TARGET_MB:.0f} MB" + ("" if full else f" (at {RSS_TARGET_WAITS:,})")
        rows.append(
            _row(
                f"{waits['held']:,} / {count:,} concurrent waits: server RSS",
                f"{waits['rss_held_mb']:.0f} MB",
                "—",
                rss_target,
                met=(waits["rss_held_mb"] < RSS_TARGET_MB and waits["held"] == count)
                if full
                else None,
            )
        )
        w = waits["wake"]
        rows.append(
            _row(
                f"wake-all of {waits['held']:,} waits (p50 / max)",
                f"{w['p50_ms']:.0f} / {w['max_ms']:.0f} ms ({waits['woken']:,} woken)",
                "—",
                "—",
                met=None if waits["woken"] == waits["held"] else False,
            )
        )
    drop = results.get("disconnect", {})
    if "release_all_s" in drop:
        rows.append(
            _row(
                f"{drop['held']:,} waits dropped at once: release all",
                f"{drop['release_all_s']:.1f} s "
                f"(slowest /metrics {drop['slowest_poll_ms']:,.0f} ms)",
                "—",
                "—",
                met=None if drop["waits_left"] == 0 else False,
            )
        )
    for name in ("register_wake", "waits", "disconnect"):
        if "error" in results.get(name, {}):
            rows.append(_row(f"{name}: failed", results[name]["error"][:60], "", "", met=False))
    if "dns" in results:
        rows.extend(dns_verdicts(results["dns"]))
    if "certs" in results:
        rows.extend(certs_verdicts(results["certs"]))
    if "v3" in results:
        rows.extend(v3report.verdicts(results["v3"]))
    return rows


def throughput_verdicts(
    name: str, load: dict[str, Any], anchor: dict[str, Any], go: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """discoverd's req/s on one v2 load as a ratio to the etcd v2 anchor's and, when it ran, to
    the Go discovery service's (`go`, bench.goanchor), then latency and CPU per request."""
    if "error" in load:
        return [_row(f"{name}: failed", load["error"][:60], "", "", met=False)]
    theirs = anchor.get("throughput", {}).get(name, {})
    service = (go or {}).get("throughput", {}).get(name, {})
    label = f"{load['method']} {load['path']}"
    rps, base = load["requests_per_s"], theirs.get("requests_per_s")
    go_rps = service.get("requests_per_s")
    goal = GOALS.get(name)
    ratio = rps / base if base else None
    go_ratio = rps / go_rps if go_rps else None
    ratios = [f"{ratio:.2f}{TIMES} etcd v2"] if ratio is not None else []
    ratios += [f"{go_ratio:.2f}{TIMES} Go service"] if go_ratio is not None else []
    value = f"{rps:,.0f}" + (f" ({' · '.join(ratios)})" if ratios else "")
    if base:
        shown = f"{base:,.0f} (etcd {anchor.get('version', '?')} {theirs['method']} "
        anchor_text = shown + f"{theirs['path']}, same run)"
    else:
        anchor_text = _anchor_missing(anchor, theirs)
    if go_rps:
        anchor_text += f" · Go service {go_rps:,.0f} ({service['method']} {service['path']})"
    elif "error" in service:
        anchor_text += f" · Go service failed: {service['error'][:60]}"
    if go_ratio is not None and goal:
        target, met = f"issue: ≥ {goal:g}{TIMES} the Go service", go_ratio >= goal
    else:
        target = (
            f"issue: ≥ {goal:g}{TIMES} the Go service (raw etcd is a stricter anchor)"
            if goal
            else "—"
        )
        met = True if ratio is not None and goal and ratio >= goal else None
    rows = [_row(f"{label} req/s", value, anchor_text, target, met=met)]
    errors = load["non_2xx"] + load["socket_errors"]
    rows.append(
        _row(
            f"{label} p50 / p99 · CPU per request",
            _latency_cpu(load, ("discoverd", "etcd")) + (f" ({errors} errors)" if errors else ""),
            (_latency_cpu(theirs, ("etcd-3.4",)) if base else "—")
            + (f" · Go: {_latency_cpu(service, GO_PROCESSES)}" if go_rps else ""),
            "—",
            met=None if not errors else False,
        )
    )
    return rows


def go_anchor_row(go: dict[str, Any]) -> dict[str, Any]:
    """Whether the Go discovery service anchor ran, what it was, or why not."""
    label = "v2 anchor: the Go discovery service"
    if "skipped" in go:
        return _row(label, go["skipped"], "—", "—", met=None)
    if "error" in go:
        return _row(label, f"failed: {go['error'][:100]}", "—", "—", met=False)
    return _row(label, f"ran: {go['binary']}", go["server"], "—", met=None)


def _anchor_missing(anchor: dict[str, Any], load: dict[str, Any]) -> str:
    if "skipped" in anchor:
        return f"etcd v2 anchor skipped: {anchor['skipped']}"
    if "error" in anchor or "error" in load:
        return f"etcd v2 anchor failed: {str(anchor.get('error') or load.get('error'))[:80]}"
    return "etcd v2 anchor not run"


def _latency_cpu(load: dict[str, Any], processes: tuple[str, ...]) -> str:
    if "p50_ms" not in load:
        return "—"
    per = load.get("cpu_us_per_request", {})
    spent = " + ".join(f"{name} {per[name]:,.0f} µs" for name in processes if name in per)
    text = f"{load['p50_ms']:.2f} / {load['p99_ms']:.2f} ms"
    errors = load.get("non_2xx", 0) + load.get("socket_errors", 0)
    return text + (f" · {spent}" if spent else "") + (f" ({errors} errors)" if errors else "")


def access_log_verdicts(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The default discoverd (info: access log) against one at --log-level warning."""
    label = "access log (info, default) vs --log-level warning"
    if "error" in found:
        return [_row(f"{label}: failed", found["error"][:80], "", "", met=False)]
    ours, theirs = found.get("default", {}), found.get("warning", {})
    if "ratio" not in found:
        return [_row(f"{label}: no result", str(found)[:80], "", "", met=False)]
    errors = ours["errors"] + theirs["errors"]
    return [
        _row(
            "GET /<token>/_config/size req/s, default (info, JSON access log)",
            f"{ours['requests_per_s']:,.0f} ({found['ratio']:.2f}{TIMES} warning)",
            f"{theirs['requests_per_s']:,.0f} (same discoverd at --log-level warning, "
            f"{found['rounds']} alternated rounds)",
            "—",
            met=None if not errors else False,
        ),
        _row(
            "access log cost per request (wall 1/req/s · CPU · bytes)",
            f"{found['wall_us_per_request']:+.1f} µs · {found['cpu_us_per_request']:+.1f} µs CPU"
            f" · {ours['log_bytes_per_request']:.0f} B",
            f"CPU {theirs['cpu_us_per_request']:.1f} µs/request at warning",
            "—",
            met=None,
        ),
    ]


def certs_verdicts(certs: dict[str, Any]) -> list[dict[str, Any]]:
    """discoverd's signings per second against cfssl serve's, then latency and CPU per signing,
    then where discoverd's time went when it was profiled."""
    ours, anchor = certs.get("discoverd", {}), certs.get("cfssl", {})
    mine, base = ours.get("signings_per_s"), anchor.get("signings_per_s")
    ratio = f"{CERTS_TARGET_RATIO:g}{TIMES} cfssl"
    target = f"≥ {CERTS_TARGET_RATIO * base:,.0f} ({ratio})" if base else f"≥ {ratio}"
    if mine is not None:
        value = f"{mine:,.0f}" + (f" ({mine / base:.2f}{TIMES} cfssl)" if base else "")
        met = mine >= CERTS_TARGET_RATIO * base if base else None
    else:
        value, met = _certs_missing(ours), None if "skipped" in ours else False
    anchor_text = f"{base:,.0f} ({CERTS_ANCHOR}, same run)" if base else _certs_missing(anchor)
    rows = [_row(CERTS_LABEL, value, anchor_text, target, met=met)]
    if mine is not None or base:
        rows.append(
            _row(
                "CSR signing p50 / p99 · CPU per signing (cores busy; wrk's CPU)",
                _certs_detail(ours, ("discoverd", "etcd")),
                _certs_detail(anchor, ("cfssl",)),
                "—",
                met=None,
            )
        )
    one = certs.get("one_token")
    if one is not None:
        rows.append(_one_token_row(one))
    profile = certs.get("profile")
    if profile is not None:
        rows.append(_profile_row(profile))
    return rows


ONE_TOKEN_TARGET = 0.5  # of the interleaved rate, with no failures


def _one_token_row(one: dict[str, Any]) -> dict[str, Any]:
    label = "CSR signings/s, 16 concurrent enrollments in one token"
    if "signings_per_s" not in one:
        return _row(label, _certs_missing(one), "—", "no failures", met=False)
    ratio = one["ratio_to_interleaved"]
    return _row(
        label,
        f"{one['signings_per_s']:,.0f} ({ratio:.2f}{TIMES} interleaved), 0 failures",
        "the interleaved rate above (same run)",
        f"no failures, ≥ {ONE_TOKEN_TARGET:g}{TIMES} the interleaved rate",
        met=ratio >= ONE_TOKEN_TARGET,
    )


def _certs_missing(side: dict[str, Any]) -> str:
    if "skipped" in side:
        return f"skipped: {side['skipped']}"
    if not side:
        return "not run"
    return f"failed: {str(side.get('error', 'no result'))[:100]}"


def _certs_detail(side: dict[str, Any], servers: tuple[str, ...]) -> str:
    if "signings_per_s" not in side:
        return _certs_missing(side)
    per, cores = side.get("cpu_us_per_signing", {}), side.get("cores_busy", {})
    cpu = side["load_cpu_s"]
    spent = " + ".join(
        f"{name} {per.get(name, 0):,.0f} µs ({cores.get(name, 0):.2f} cores)" for name in servers
    )
    tool = cpu.get("load_generator")
    text = f"{side['p50_ms']:.1f} / {side['p99_ms']:.1f} ms · {spent}"
    if tool is not None:
        text += f" (wrk {tool:.1f} s in {side['duration_s']:g} s)"
    if side["socket_errors"]:
        text += f" · {side['socket_errors']} socket errors"
    return text


def _profile_row(profile: dict[str, Any]) -> dict[str, Any]:
    label = "discoverd profile (py-spy --gil): innermost discoverd function"
    if "by_innermost_discoverd_function" not in profile:
        return _row(label, _certs_missing(profile), "—", "—", met=None)
    top = profile["by_innermost_discoverd_function"][:PROFILE_ROWS]
    shown = " · ".join(f"{row['what'].split(' (')[0]} {row['pct']:.0f}%" for row in top)
    threads = " · ".join(
        f"{row['what'].split(' (')[0]} {row['pct']:.0f}%" for row in profile.get("by_thread", [])
    )
    value = f"{shown} (of {profile['samples']:,} GIL samples; by thread: {threads})"
    return _row(label, value, "—", "—", met=None)


def dns_verdicts(dns: dict[str, Any]) -> list[dict[str, Any]]:
    """Per DNS load: discoverd's median QPS against dnsmasq's, then latency, loss and sizes."""
    if "skipped" in dns:
        return [_row("DNS: skipped", dns["skipped"], "", "", met=None)]
    ours, anchor = dns.get("discoverd", {}), dns.get("dnsmasq", {})
    rows: list[dict[str, Any]] = []
    for name, label in DNS_LOADS.items():
        mine, theirs = _dns_load(ours, name), _dns_load(anchor, name)
        base = theirs.get("queries_per_s") if "queries_per_s" in theirs else None
        ratio = f"{DNS_TARGET_RATIO:g}{TIMES} dnsmasq"
        target = f"≥ {DNS_TARGET_RATIO * base:,.0f} ({ratio})" if base else f"≥ {ratio}"
        if "queries_per_s" in mine:
            qps = mine["queries_per_s"]
            value = f"{qps:,.0f}" + (f" ({qps / base:.2f}{TIMES} dnsmasq)" if base else "")
            met = qps >= DNS_TARGET_RATIO * base if base else None
        else:
            value, met = _dns_missing(mine), None if "skipped" in mine else False
        anchor_text = (
            f"{base:,.0f} (dnsmasq, same run)" if base else f"dnsmasq {_dns_missing(theirs)}"
        )
        rows.append(_row(DNS_QPS_LABELS[name], value, anchor_text, target, met=met))
        if "queries_per_s" in mine or base:
            rows.append(
                _row(
                    f"{label} avg latency · lost · bytes query/response",
                    _dns_detail(mine),
                    _dns_detail(theirs),
                    "—",
                    met=None if not mine.get("lost") else False,
                )
            )
    return rows


def _dns_load(side: dict[str, Any], name: str) -> dict[str, Any]:
    """One load of one DNS side, or why it has none (`skipped` or `error`)."""
    if "skipped" in side or "error" in side:
        return side
    if not side:
        return {"skipped": "not run"}
    return dict(side.get("loads", {}).get(name, {"error": "no result"}))


def _dns_missing(load: dict[str, Any]) -> str:
    if "skipped" in load:
        return f"skipped: {load['skipped']}"
    return f"failed: {str(load.get('error', 'no result'))[:80]}"


def _dns_detail(load: dict[str, Any]) -> str:
    if "queries_per_s" not in load:
        return _dns_missing(load)
    lost = f"{load['lost']:,} lost of {load['sent']:,}" if load["lost"] else "0 lost"
    return (
        f"{load['avg_latency_ms']:.2f} ms · {lost} · "
        f"{load['request_bytes']} / {load['response_bytes']} B"
    )


def _row(metric: str, value: str, anchor: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"metric": metric, "discoverd": value, "anchor": anchor, "target": target, "met": met}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| metric | discoverd | anchor | target |", "|---|---|---|---|"]
    for row in rows:
        mark = {True: " ✅", False: " ❌", None: ""}[row["met"]]
        lines.append(
            f"| {row['metric']} | {row['discoverd']}{mark} | {row['anchor']} | {row['target']} |"
        )
    return "\n".join(lines)
