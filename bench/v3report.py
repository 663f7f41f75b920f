"""The table rows of the v3 discovery phases (bench.v3): each figure beside its anchor from the
same run, as a ratio. Only the watch streams have targets (RSS, and every stream woken within
1 s of the last registration); the bootstrap and KV/Range ratios are reported, not judged."""

from __future__ import annotations

from typing import Any

TIMES = "\N{MULTIPLICATION SIGN}"
RSS_TARGET_MB = 400.0  # issue 8: 10,000 waiting watch streams under 400 MB
WAKE_TARGET_MS = 1000.0
ANCHOR = "real etcd 3.7 as discovery endpoint"


def verdicts(v3: dict[str, Any]) -> list[dict[str, Any]]:
    if "skipped" in v3:
        return [_row("v3 discovery: skipped", v3["skipped"], "", "", met=None)]
    if "error" in v3:
        return [_row("v3 discovery: failed", v3["error"][:80], "", "", met=False)]
    rows: list[dict[str, Any]] = []
    rows.extend(_bootstrap(v3.get("bootstrap", {})))
    rows.extend(_watches(v3.get("watches", {})))
    rows.extend(_range(v3.get("range", {})))
    return rows


def _bootstrap(boot: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in boot:
        return [_row("v3 bootstrap: failed", boot["error"][:80], "", "", met=False)]
    rows = []
    for size, row in boot.items():
        if not isinstance(row, dict) or "ratio" not in row:
            continue
        rows.append(
            _row(
                f"v3 bootstrap, {size} etcd {boot['etcd_members']} members "
                f"(median of {boot['runs']})",
                f"{row['discoverd']:.2f} s ({row['ratio']:.2f}{TIMES} etcd)",
                f"{row['etcd']:.2f} s ({ANCHOR})",
                "—",
                met=None,
            )
        )
    return rows


def _watches(watches: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in watches:
        return [_row("v3 watch streams: failed", watches["error"][:80], "", "", met=False)]
    ours, theirs = watches.get("discoverd", {}), watches.get("etcd", {})
    if "held" not in ours:
        return [_row("v3 watch streams: failed", str(ours)[:80], "", "", met=False)]
    count, created = ours["target"], ours["created"]
    rss = ours["held"]["rss_mb"]
    wake = ours.get("wake", {})
    within, woken = ours.get("woken_within_1s", 0), ours.get("woken", 0)
    anchor_rss = anchor_wake = "—"
    if "held" in theirs:
        anchor_rss = f"{theirs['held']['rss_mb']:.0f} MB (etcd 3.7, same streams)"
        w = theirs.get("wake", {})
        anchor_wake = (
            f"{w.get('p50_ms', 0):.0f} / {w.get('max_ms', 0):.0f} ms "
            f"({theirs.get('woken_within_1s', 0):,} within 1 s)"
        )
        if w.get("max_ms"):
            ratio = f", {wake.get('max_ms', 0) / w['max_ms']:.1f}{TIMES} etcd"
        else:
            ratio = ""
    else:
        ratio = ""
    return [
        _row(
            f"{created:,} / {count:,} v3 watch streams: server RSS",
            f"{rss:.0f} MB (+{rss - ours['rss_before_mb']:.0f} MB for the streams)",
            anchor_rss,
            f"< {RSS_TARGET_MB:.0f} MB",
            met=rss < RSS_TARGET_MB and created == count,
        ),
        _row(
            f"v3 wake-all of {created:,} streams from the last registration's send (p50 / max)",
            f"{wake.get('p50_ms', 0):.0f} / {wake.get('max_ms', 0):.0f} ms ({within:,} of "
            f"{woken:,} within 1 s{ratio}; last Put acknowledged after "
            f"{ours.get('last_put_ms', 0):.0f} ms)",
            anchor_wake,
            f"all within {WAKE_TARGET_MS:.0f} ms",
            met=woken == created == within,
        ),
    ]


def _range(ranged: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in ranged:
        return [_row("v3 KV/Range: failed", ranged["error"][:80], "", "", met=False)]
    ours, theirs = ranged.get("discoverd", {}), ranged.get("etcd", {})
    if "requests_per_s" not in ours or "requests_per_s" not in theirs:
        return []
    return [
        _row(
            f"v3 KV/Range on a size key req/s ({ours['concurrency']} callers)",
            f"{ours['requests_per_s']:,.0f} ({ranged['ratio']:.2f}{TIMES} etcd)",
            f"{theirs['requests_per_s']:,.0f} (etcd 3.7, same driver)",
            "—",
            met=None,
        ),
        _row(
            "v3 KV/Range p50 / p99",
            f"{ours['p50_ms']:.2f} / {ours['p99_ms']:.2f} ms",
            f"{theirs['p50_ms']:.2f} / {theirs['p99_ms']:.2f} ms",
            "—",
            met=None if not (ours["errors"] or theirs["errors"]) else False,
        ),
    ]


def _row(metric: str, value: str, anchor: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"metric": metric, "discoverd": value, "anchor": anchor, "target": target, "met": met}
