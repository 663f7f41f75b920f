"""The operator's cluster commands: `discoverd new` and `discoverd status`.

`new` mints a token and prints what the nodes need: the v3 discovery flags (etcd >= 3.6), the
v2 discovery URL (etcd <= 3.6), the DNS domain, the CA fingerprint to pin, the SHA-256 of the
one-file join client the nodes fetch (GET /api/v1/join.py) and a cloud-init snippet; `-q`
prints only the v2 URL and `--v3` only the v3 flags, for scripts. `status` shows members,
certificates and DNS records of a cluster and what etcd itself did (`clusters.progress`): in
discovery mode etcd's own registrations, in srv mode the members' health (`clusters.health`),
never `join`'s member API records as if they were etcd's. It exits 0 only when etcd proved
`size` members; with --wait it follows the cluster with progress bars until then. Both commands
say each retry of an unreachable server on stderr.
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from rich.table import Table

from discoverd.api_client import ApiClient, ApiError, split_url
from discoverd.certs import pki
from discoverd.clusters import health
from discoverd.clusters.health import State
from discoverd.clusters.progress import DISCOVERY, Progress, judge, needs_health
from discoverd.errors import DiscoverdError

POLL = 1.0  # --wait: between two looks at the cluster

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


def status(
    url_or_token: str,
    server: str,
    wait: bool,
    timeout: float,
    *,
    cert: Path | None = None,
    key: Path | None = None,
) -> int:
    try:
        if (cert is None) != (key is None):
            raise ValueError("--cert and --key go together")
        if cert is not None and key is not None:
            health.client_context(None, cert, key)  # unreadable files: said now, not later
    except ValueError as exc:
        print(f"discoverd status: {exc}", file=sys.stderr)
        return 2
    try:
        base, token = split_url(url_or_token, server)
        client = ApiClient(base, time.monotonic() + timeout, say=_say("status"))
        observer = _Observer(client, token, (cert, key) if cert and key else None)
        seen = observer.look()
        if wait and not seen.settled:
            seen = _follow(observer, seen, timeout)
    except ApiError as exc:
        print(f"discoverd status: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the client certificate or the cluster CA
        print(f"discoverd status: {exc}", file=sys.stderr)
        return 2
    Console().print(_table(observer.cluster, seen))
    verdict = seen.verdict()
    if verdict is not None:
        print(verdict, file=sys.stderr)
        return 1
    return 0


class _Observer:
    """The cluster's view, and in srv mode its members' health (TLS: the cluster CA, fetched
    once and checked against the view's `ca_sha256`, and the operator's client certificate)."""

    def __init__(self, client: ApiClient, token: str, identity: tuple[Path, Path] | None) -> None:
        self.client = client
        self.token = token
        self.identity = identity
        self.cluster: dict[str, Any] = {}
        self._tls: ssl.SSLContext | None = None
        self._no_tls = health.NEEDS_CERT

    def look(self) -> Progress:
        self.cluster = self.client.cluster(self.token)
        wanted = needs_health(self.cluster)
        if any(url.startswith("https:") for urls in wanted.values() for url in urls):
            self._load_tls()
        return judge(self.cluster, health.check_all(wanted, self._tls, self._no_tls))

    def _load_tls(self) -> None:
        if self._tls is not None or self.identity is None:
            return
        pinned = self.cluster.get("ca_sha256")
        if not pinned:
            self._no_tls = "TLS: the cluster has no CA to verify members with"
            return
        ca_pem = self.client.get_text(f"/api/v1/clusters/{self.token}/ca.pem")
        try:
            sent = pki.fingerprint(pki.load_cert(ca_pem))
        except DiscoverdError as exc:
            raise ApiError(f"the cluster CA the server sent is not a certificate: {exc}") from None
        if sent != pinned:
            raise ApiError("the cluster CA the server sent does not match its ca_sha256")
        self._tls = health.client_context(ca_pem, *self.identity)


def _follow(observer: _Observer, progress: Progress, timeout: float) -> Progress:
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    size = progress.size
    with Bars(*columns, console=Console(stderr=True), transient=True) as bars:
        joined = bars.add_task("joined (member API)", total=size)
        proved = bars.add_task("registered by etcd", total=size)
        certs = bars.add_task("certificates issued", total=size)
        while True:
            bars.update(joined, completed=progress.joined)
            if progress.mode == DISCOVERY:
                bars.update(proved, description="registered by etcd", completed=progress.by_etcd)
            else:
                healthy = progress.counted(State.HEALTHY)
                bars.update(proved, description="healthy (srv mode)", completed=healthy)
            cluster = observer.cluster
            issued = {c["name"] for c in cluster["certificates"] if c["profile"] == "peer"}
            bars.update(certs, completed=len(issued))
            if progress.settled:
                return progress
            if time.monotonic() > deadline:
                print(f"discoverd status: timed out after {timeout:g}s", file=sys.stderr)
                return progress
            time.sleep(POLL)
            progress = observer.look()


def _table(cluster: dict[str, Any], progress: Progress) -> Table:
    name = f" ({cluster['name']})" if cluster.get("name") else ""
    table = Table(title=f"cluster {cluster['token'][:8]}…{name}: {progress.headline()}")
    table.add_column("member", no_wrap=True)
    table.add_column("joined", no_wrap=True)
    table.add_column("etcd registered", no_wrap=True)
    table.add_column("health", overflow="fold")
    table.add_column("peer URLs", overflow="fold", min_width=12)
    table.add_column("certificates", overflow="fold")
    for member in progress.members:
        table.add_row(
            member.name,
            "yes" if member.joined else "no",
            member.etcd or "no",
            str(member.health) if member.health is not None else "-",
            "\n".join(member.peer_urls),
            ", ".join(member.certificates) or "-",
        )
    table.caption = (
        "joined: discoverd join's member API record; etcd registered: etcd's own discovery "
        "registration; health (srv mode): etcd's /health through the client URLs\nDNS: "
        + ", ".join(cluster["dns"]["srv"] or cluster["dns"]["domains"])
    )
    return table
