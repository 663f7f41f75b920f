"""What a cluster publishes in DNS: its members' names and URLs, from both registries.

A v2 registration (`name=peerURL[,…]`) publishes peer URLs the moment the member registers;
the member API adds client URLs. When both know a name, the member API record wins. A cluster
is published under its label (`directory.rules.cluster_label`), never under its token.
"""

from __future__ import annotations

from discoverd.directory import rules
from discoverd.dns.zone import MemberEndpoints, Published
from discoverd.models import Cluster


def published(cluster: Cluster) -> Published:
    peers: dict[str, list[str]] = {}
    for member in cluster.members:
        for pair in member.value.split(","):
            name, _, url = pair.partition("=")
            peers.setdefault(name, []).append(url)
    members = {name: MemberEndpoints(name, tuple(urls)) for name, urls in peers.items()}
    for api in cluster.api_members:
        members[api.name] = MemberEndpoints(api.name, api.record.peer_urls, api.record.client_urls)
    ordered = tuple(members[name] for name in sorted(members))
    return Published(rules.cluster_label(cluster.token), cluster.config.name, ordered)
