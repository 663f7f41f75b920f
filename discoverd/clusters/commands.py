"""The operator's cluster commands: `discoverd new` and `discoverd status`.

`new` mints a token and prints what the nodes need: the v3 discovery flags (etcd >= 3.6), the
v2 discovery URL (etcd <= 3.6), the DNS domain, the CA fingerprint to pin, the SHA-256 of the
one-file join client the nodes fetch (GET /api/v1/join.py) and a cloud-init snippet; `-q`
prints only the v2 URL and `--v3` only the v3 flags, for scripts. `status` shows members,
certificates and DNS records of a cluster, and with --wait follows it with a progress bar
until it is complete. Both say each retry of an unreachable server on stderr.
"""

from __future__ import annotations

import hashlib
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from discoverd.api_client import ApiClient, ApiError, split_url

SNIPPET = """\
# The /etc/discoverd/join.conf of deploy/cloud-init/etcd-member.yaml, filled in:
write_files:
  - path: /etc/discoverd/join.conf
    permissions: "0600"
    content: |
      DISCOVERD_SERVER={server}
      DISCOVERD_TOKEN={token}
      DISCOVERD_CA_SHA256={ca_sha256}
      DISCOVERD_MODE=discovery
      DISCOVERD_JOIN_SHA256={join_sha256}
"""


def _say(command: str) -> Callable[[str], None]:
    return lambda line: print(f"discoverd {command}: {line}", file=sys.stderr)


def new(
    server: str,
    size: int,
    *,
    name: str | None,
    cidrs: list[str],
    dns: list[str],
    quiet: bool,
    v3_only: bool = False,
    timeout: float,
    allow_root: bool = False,
) -> int:
    query = [("size", str(size))] + ([("name", name)] if name else [])
    query += [("root", "1")] if allow_root else []
    query += [("cidr", c) for c in cidrs] + [("dns", d) for d in dns]
    try:
        client = ApiClient(server, time.monotonic() + timeout, say=_say("new"))
        url = client.call("POST", "/new?" + urllib.parse.urlencode(query)).decode().strip()
        if quiet:
            print(url)
            return 0
        token = url.rsplit("/", 1)[1]
        if v3_only:
            flags = _v3_flags(client.cluster(token))
            if flags is None:
                raise ApiError(f"{client.server} offers no v3 discovery (too old a discoverd)")
            print(flags)
            return 0
        client.get_text(f"/api/v1/clusters/{token}/ca.pem")  # makes the CA, to pin it now
        cluster = client.cluster(token)
        # the one-file join client the nodes fetch, pinned by its digest
        join_sha256 = hashlib.sha256(client.call("GET", "/api/v1/join.py")).hexdigest()
    except ApiError as exc:
        print(f"discoverd new: {exc}", file=sys.stderr)
        return 1
    flags = _v3_flags(cluster)
    print(f"v3 flags (etcd >= 3.6):      {flags or '(this server offers no v3 discovery)'}")
    print(f"discovery URL (etcd <= 3.6): {url}")
    print(f"DNS domain:                  {', '.join(cluster['dns']['domains'])}")
    print(f"CA sha256:                   {cluster['ca_sha256']}")
    print(f"join.py sha256:              {join_sha256}")
    print(f"expires:                     {cluster['expires_at']}")
    print()
    snippet = SNIPPET.format(
        server=client.server, token=token, ca_sha256=cluster["ca_sha256"], join_sha256=join_sha256
    )
    print(snippet)
    return 0


def _v3_flags(cluster: dict[str, Any]) -> str | None:
    v3 = cluster.get("discovery_v3")
    return str(v3["flags"]) if v3 and v3.get("endpoints") else None


def status(url_or_token: str, server: str, wait: bool, timeout: float) -> int:
    try:
        base, token = split_url(url_or_token, server)
        client = ApiClient(base, time.monotonic() + timeout, say=_say("status"))
        cluster = client.cluster(token)
        if wait and not _complete(cluster):
            cluster = _follow(client, token, cluster, timeout)
    except ApiError as exc:
        print(f"discoverd status: {exc}", file=sys.stderr)
        return 1
    Console().print(_table(cluster))
    if not _complete(cluster):
        registered, size = len(cluster["members"]), cluster["size"]
        print(f"incomplete: {registered} of {size} members registered", file=sys.stderr)
        return 1
    return 0


def _complete(cluster: dict[str, Any]) -> bool:
    return len(cluster["members"]) >= int(cluster["size"])


def _follow(
    client: ApiClient, token: str, cluster: dict[str, Any], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        members = progress.add_task("members registered", total=cluster["size"])
        certs = progress.add_task("certificates issued", total=cluster["size"])
        while True:
            progress.update(members, completed=len(cluster["members"]))
            issued = {c["name"] for c in cluster["certificates"] if c["profile"] == "peer"}
            progress.update(certs, completed=len(issued))
            if _complete(cluster):
                return cluster
            if time.monotonic() > deadline:
                raise ApiError(f"timed out after {timeout:.0f}s")
            time.sleep(1)
            cluster = client.cluster(token)


def _table(cluster: dict[str, Any]) -> Table:
    name = f" ({cluster['name']})" if cluster.get("name") else ""
    count = len(cluster["members"])
    table = Table(
        title=f"cluster {cluster['token'][:8]}…{name}: {count} of {cluster['size']} members"
    )
    for column in ("member", "peer URLs", "client URLs", "certificates"):
        table.add_column(column)
    for member in cluster["members"]:
        certs = [c["profile"] + (" (revoked)" if c["revoked"] else "")
                 for c in cluster["certificates"] if c["name"] == member["name"]]  # fmt: skip
        table.add_row(
            member["name"], "\n".join(member["peer_urls"]), "\n".join(member["client_urls"]),
            ", ".join(certs) or "-",
        )  # fmt: skip
    table.caption = "DNS: " + ", ".join(cluster["dns"]["srv"] or cluster["dns"]["domains"])
    return table
