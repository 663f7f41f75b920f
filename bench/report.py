"""Where a bench run's results go: the machine it ran on, the JSON files under bench/results/,
and the Markdown table (metric | discoverd | anchor | target) printed to stdout.

The anchors were measured by the issue's author on this 2-core machine with `wrk -t2 -c32`,
service and etcd on the same box, against the Go etcd-io/discoveryserver.
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

RESULTS_DIR = Path(__file__).resolve().parent / "results"

READ_TARGET = 15_000.0
NEW_TARGET = 5_600.0
RSS_TARGET_MB = 300.0
RSS_TARGET_WAITS = 10_000

# load name -> (anchor text, target req/s)
THROUGHPUT = {
    "get_size": ("4,700-5,000 req/s", READ_TARGET),
    "get_dir": ("4,700-5,000 req/s", READ_TARGET),
    "new": ("~2,800 req/s", NEW_TARGET),
}


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
    for name, load in results.get("throughput", {}).items():
        if name == "warmup":
            continue
        if "error" in load:
            rows.append(_row(f"{name}: failed", load["error"][:60], "", "", met=False))
            continue
        anchor, target = THROUGHPUT.get(name, ("—", 0.0))
        label = f"{load['method']} {load['path']}"
        rps = load["requests_per_s"]
        rows.append(
            _row(f"{label} req/s", f"{rps:,.0f}", anchor, f"≥ {target:,.0f}", met=rps >= target)
        )
        errors = load["non_2xx"] + load["socket_errors"]
        rows.append(
            _row(
                f"{label} p50 / p99",
                f"{load['p50_ms']:.2f} / {load['p99_ms']:.2f} ms"
                + (f" ({errors} errors)" if errors else ""),
                "—",
                "—",
                met=None if not errors else False,
            )
        )
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
    return rows


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
