"""What a cluster publishes in DNS: its members' names and URLs, from both registries.

A v2 registration (`name=peerURL[,…]`) publishes peer URLs the moment the member registers;
the member API adds client URLs. When both know a name, the member API record wins. A cluster
is published under its label (`directory.rules.cluster_label`), never under its token.
The result is kept in the (immutable) cluster's memo: every reader of one version shares it.
"""

from __future__ import annotations

from functools import lru_cache

from discoverd.directory import rules
from discoverd.dns.zone import MemberEndpoints, Published
from discoverd.models import Cluster

_MEMO = "dns/published"


def published(cluster: Cluster) -> Published:
    found = cluster.memo.get(_MEMO)
    if isinstance(found, Published):
        return found
    peers: dict[str, list[str]] = {}
    for member in cluster.members:
        for name, url in _pairs(member.value):
            peers.setdefault(name, []).append(url)
    members = {name: MemberEndpoints(name, tuple(urls)) for name, urls in peers.items()}
    for api in cluster.api_members:
        members[api.name] = MemberEndpoints(api.name, api.record.peer_urls, api.record.client_urls)
    ordered = tuple(members[name] for name in sorted(members))
    result = Published(rules.cluster_label(cluster.token), cluster.config.name, ordered)
    cluster.memo[_MEMO] = result
    return result


@lru_cache(maxsize=16_384)
def _pairs(value: str) -> tuple[tuple[str, str], ...]:
    """`a=http://…,a=http://…` -> ((name, url), …); registrations are immutable, so each is
    split once, not at every change of its cluster."""
    return tuple((name, url) for name, _, url in (pair.partition("=") for pair in value.split(",")))
