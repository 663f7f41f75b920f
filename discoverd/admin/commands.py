"""The operator's commands: `discoverd clusters` (the fleet, through the admin API) and
`discoverd backup` (a snapshot of the backing etcd). Each failure is one line on stderr and a
non-zero exit."""

from __future__ import annotations

import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from discoverd.api_client import ApiClient, ApiError
from discoverd.store import snapshot


def clusters(
    server: str,
    token: str,
    *,
    name: str | None,
    limit: int,
    offset: int,
    timeout: float,
) -> int:
    query = {"limit": str(limit), "offset": str(offset)} | ({"name": name} if name else {})
    client = ApiClient(
        server, time.monotonic() + timeout, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        fleet = client.get_json("/api/v1/admin/clusters?" + urllib.parse.urlencode(query))
    except ApiError as exc:
        print(f"discoverd clusters: {exc}", file=sys.stderr)
        return 1
    Console().print(fleet_table(fleet))
    return 0


def fleet_table(fleet: dict[str, Any]) -> Table:
    shown, total, offset = len(fleet["clusters"]), fleet["total"], fleet["offset"]
    title = f"{total} clusters" + (
        f" (showing {offset + 1}-{offset + shown})" if shown < total else ""
    )
    table = Table(title=title)
    for column in ("cluster", "name", "members", "bootstrap", "CA expires", "certificates"):
        table.add_column(column)
    for cluster in fleet["clusters"]:
        window = cluster["bootstrap"]
        until = _day(window["until"])
        bootstrap = ("open" if window["open"] else "closed") + (
            f" (until {until})" if until else ""
        )
        certs = cluster["certificates"]
        issued = str(certs["count"])
        if certs["earliest_expiry"]:
            issued += f", first expiry {_day(certs['earliest_expiry'])}"
        if certs["revoked"]:
            issued += f", {certs['revoked']} revoked"
        ca = cluster["ca"]
        table.add_row(
            cluster["fingerprint"],
            cluster["name"] or "-",
            f"{cluster['registered']}/{cluster['size']}",
            bootstrap,
            _day(ca["expires_at"]) or ("yes" if ca["present"] else "no CA"),
            issued,
        )
    return table


def _day(iso: str | None) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M") if iso else ""


def backup(endpoints: tuple[str, ...], out: Path, service_key: Path | None) -> int:
    try:
        taken = snapshot.save(endpoints, out)
    except snapshot.SnapshotError as exc:
        print(f"discoverd backup: {exc}", file=sys.stderr)
        return 1
    print(f"snapshot of {taken.endpoint} written to {taken.path} ({taken.size} bytes, sha256 ok)")
    key = f" ({service_key})" if service_key else ""
    print(
        f"NOTE: the service key{key} is not in it, and without it the CA keys in this snapshot "
        "cannot be used: keep a copy of it with the backup.",
        file=sys.stderr,
    )
    return 0
