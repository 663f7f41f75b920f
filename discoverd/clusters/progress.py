"""How far a cluster's bootstrap really got, from the cluster's JSON view and, in srv mode, the
members' health. Pure: `discoverd status` fetches, this module judges.

Two kinds of registration must never be mixed up. `discoverd join` writes a member API record
("joined") before etcd even starts, so it proves nothing about etcd. In discovery mode the etcd
process registers itself (v2 or v3): that registration is the proof. In srv mode there is no
discovery registration at all, so the proof is the member's health through its client URLs, when
they can be checked. The mode is discovery as soon as one etcd registered, srv before that (a
discovery-mode cluster whose members have not registered yet shows as srv mode with unhealthy
members: incomplete either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from discoverd.clusters.health import Health, State

DISCOVERY = "discovery"
SRV = "srv"


@dataclass(frozen=True, slots=True)
class MemberState:
    name: str
    joined: bool  # a member API record (`discoverd join`)
    etcd: str | None  # the discovery protocol etcd registered through ("v2", "v3"), or None
    health: Health | None  # srv mode only
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    certificates: tuple[str, ...]  # "peer", "client (revoked)", ...


@dataclass(frozen=True, slots=True)
class Progress:
    mode: str
    size: int
    members: tuple[MemberState, ...]

    @property
    def joined(self) -> int:
        return sum(1 for member in self.members if member.joined)

    @property
    def by_etcd(self) -> int:
        return sum(1 for member in self.members if member.etcd)

    def counted(self, state: State) -> int:
        return sum(1 for m in self.members if m.health is not None and m.health.state is state)

    @property
    def complete(self) -> bool:
        """etcd itself proved `size` members: registered (discovery) or healthy (srv)."""
        if self.mode == DISCOVERY:
            return self.by_etcd >= self.size
        return self.counted(State.HEALTHY) >= self.size

    @property
    def unverifiable(self) -> bool:
        """srv mode: every member joined and none is unhealthy, but some cannot be checked."""
        if self.mode != SRV or self.complete or self.joined < self.size:
            return False
        healthy, unchecked = self.counted(State.HEALTHY), self.counted(State.UNCHECKED)
        return unchecked > 0 and healthy + unchecked >= self.size

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: complete, or all that can still change was seen."""
        return self.complete or self.unverifiable

    def headline(self) -> str:
        if self.mode == DISCOVERY:
            return f"{self.by_etcd} of {self.size} registered by etcd"
        return f"{self.counted(State.HEALTHY)} of {self.size} healthy (srv mode)"

    def verdict(self) -> str | None:
        """None when complete; else the one line that says what is missing."""
        if self.complete:
            return None
        joined = f"{self.joined} of {self.size} joined (member API)"
        if self.mode == DISCOVERY:
            return (
                f"incomplete: {self.by_etcd} of {self.size} members registered by etcd itself "
                f"(discovery); {joined}"
            )
        healthy, unchecked = self.counted(State.HEALTHY), self.counted(State.UNCHECKED)
        reasons = sorted({h.reason for h in (m.health for m in self.members) if _unchecked(h)})
        text = (
            f"{healthy} of {self.size} members healthy (srv mode: no discovery registration, "
            f"so etcd's health through the client URLs); {joined}"
        )
        if unchecked:
            text += f"; {unchecked} not checked ({'; '.join(reasons)})"
        return ("cannot verify: " if self.unverifiable else "incomplete: ") + text


def judge(cluster: Mapping[str, Any], health: Mapping[str, Health]) -> Progress:
    """The progress of `cluster` (the JSON view), with `health` by member name (srv mode)."""
    members = cluster["members"]
    by_etcd = any(_etcd(member) for member in members)
    mode = DISCOVERY if by_etcd else SRV
    return Progress(
        mode,
        int(cluster["size"]),
        tuple(
            MemberState(
                name=member["name"],
                joined=bool(member.get("joined", not _etcd(member))),
                etcd=_etcd(member),
                health=health.get(member["name"]) if mode == SRV else None,
                peer_urls=tuple(member["peer_urls"]),
                client_urls=tuple(member["client_urls"]),
                certificates=tuple(
                    cert["profile"] + (" (revoked)" if cert["revoked"] else "")
                    for cert in cluster["certificates"]
                    if cert["name"] == member["name"]
                ),
            )
            for member in members
        ),
    )


def needs_health(cluster: Mapping[str, Any]) -> dict[str, list[str]]:
    """Members whose health `status` asks (srv mode): name -> client URLs; none in discovery."""
    if any(_etcd(member) for member in cluster["members"]):
        return {}
    return {member["name"]: list(member["client_urls"]) for member in cluster["members"]}


def _unchecked(health: Health | None) -> TypeGuard[Health]:
    return health is not None and health.state is State.UNCHECKED


def _etcd(member: Mapping[str, Any]) -> str | None:
    """The protocol etcd registered through; from an older server, a discovery id alone."""
    if "etcd_registered" in member:
        return str(member.get("protocol") or "v2") if member["etcd_registered"] else None
    return "v2" if member.get("discovery_id") else None
