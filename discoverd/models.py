"""Domain types shared by the store and the faces: what a cluster and a member are.

`ClusterConfig` is stored as JSON; unknown fields are ignored so that replicas of different
versions can share one etcd. `Cluster` and `Member` are immutable views held by the registry
snapshot; a change replaces the whole `Cluster` object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    """What is fixed when a token is created."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    size: int = Field(ge=1)
    created_at: float = Field(description="unix time of creation")
    name: str | None = Field(default=None, description="published as <name>.<zone> in DNS")


class MemberRecord(BaseModel):
    """A member registered through the member API: the URLs its peers and clients use."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiMember:
    name: str
    record: MemberRecord
    revision: int  # etcd mod revision of the record


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
    api_members: tuple[ApiMember, ...] = field(default=())

    def member(self, member_id: str) -> Member | None:
        for member in self.members:
            if member.member_id == member_id:
                return member
        return None

    def with_member(self, member: Member) -> Cluster:
        kept = tuple(m for m in self.members if m.member_id != member.member_id)
        ordered = tuple(sorted((*kept, member), key=lambda m: m.created))
        return replace(self, members=ordered)

    def without_member(self, member_id: str) -> Cluster:
        return replace(self, members=tuple(m for m in self.members if m.member_id != member_id))

    def with_api_member(self, member: ApiMember) -> Cluster:
        kept = tuple(m for m in self.api_members if m.name != member.name)
        return replace(self, api_members=tuple(sorted((*kept, member), key=lambda m: m.name)))

    def without_api_member(self, name: str) -> Cluster:
        return replace(self, api_members=tuple(m for m in self.api_members if m.name != name))

    def member_names(self) -> set[str]:
        """Every member name registered, through v2 discovery or the member API."""
        v2 = {member.value.partition("=")[0] for member in self.members}
        return v2 | {member.name for member in self.api_members}
