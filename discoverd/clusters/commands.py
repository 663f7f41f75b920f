"""The operator's cluster commands: `discoverd new` and `discoverd status`.

`new` mints a token and prints what the nodes need: the discovery URL, the DNS domain, the
CA fingerprint to pin and a cloud-init snippet. `status` shows members, certificates and DNS
records of a cluster, and with --wait follows it with a progress bar until it is complete.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from discoverd import __version__
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
      DISCOVERD_PIP_SPEC=discoverd=={version}
"""


def new(
    server: str,
    size: int,
    *,
    name: str | None,
    cidrs: list[str],
    dns: list[str],
    quiet: bool,
    timeout: float,
    allow_root: bool = False,
) -> int:
    query = [("size", str(size))] + ([("name", name)] if name else [])
    query += [("root", "1")] if allow_root else []
    query += [("cidr", c) for c in cidrs] + [("dns", d) for d in dns]
    client = ApiClient(server, time.monotonic() + timeout)
    try:
        url = client.call("POST", "/new?" + urllib.parse.urlencode(query)).decode().strip()
        if quiet:
            print(url)
            return 0
        token = url.rsplit("/", 1)[1]
        client.get_text(f"/api/v1/clusters/{token}/ca.pem")  # makes the CA, to pin it now
        cluster = client.get_json(f"/api/v1/clusters/{token}")
    except ApiError as exc:
        print(f"discoverd new: {exc}", file=sys.stderr)
        return 1
    print(f"discovery URL: {url}")
    print(f"DNS domain:    {', '.join(cluster['dns']['domains'])}")
    print(f"CA sha256:     {cluster['ca_sha256']}")
    print(f"expires:       {cluster['expires_at']}")
    print()
    snippet = SNIPPET.format(
        server=server.rstrip("/"), token=token, ca_sha256=cluster["ca_sha256"], version=__version__
    )
    print(snippet)
    return 0


def status(url_or_token: str, server: str | None, wait: bool, timeout: float) -> int:
    try:
        base, token = split_url(url_or_token, server)
        client = ApiClient(base, time.monotonic() + timeout)
        cluster = client.get_json(f"/api/v1/clusters/{token}")
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
            cluster = client.get_json(f"/api/v1/clusters/{token}")


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
