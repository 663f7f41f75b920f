"""Domain types shared by the store and the faces: what a cluster and a member are.

`ClusterConfig` is stored as JSON; unknown fields are ignored so that replicas of different
versions can share one etcd. `Cluster` and `Member` are immutable views held by the registry
snapshot; a change replaces the whole `Cluster` object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    """What is fixed when a token is created."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    size: int = Field(ge=1)
    created_at: float = Field(description="unix time of creation")


@dataclass(frozen=True, slots=True)
class Member:
    """One v2 registration. Immutable: registrations are create-only."""

    member_id: str
    value: str
    created: int  # etcd create revision = v2 createdIndex = modifiedIndex


@dataclass(frozen=True, slots=True)
class Cluster:
    """One token: its config and its registrations, ordered by creation."""

    token: str
    config: ClusterConfig
    created: int  # revision of the config key
    lease: int
    members: tuple[Member, ...] = field(default=())

    def member(self, member_id: str) -> Member | None:
        for member in self.members:
            if member.member_id == member_id:
                return member
        return None

    def with_member(self, member: Member) -> Cluster:
        kept = tuple(m for m in self.members if m.member_id != member.member_id)
        ordered = tuple(sorted((*kept, member), key=lambda m: m.created))
        return Cluster(self.token, self.config, self.created, self.lease, ordered)

    def without_member(self, member_id: str) -> Cluster:
        kept = tuple(m for m in self.members if m.member_id != member_id)
        return Cluster(self.token, self.config, self.created, self.lease, kept)
