"""Domain types shared by the store and the faces: what a cluster and a member are.

`ClusterConfig` is stored as JSON; unknown fields are ignored so that replicas of different
versions can share one etcd. `Cluster` and `Member` are immutable views held by the registry
snapshot; a change replaces the whole `Cluster` object.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DOMAIN = re.compile(
    r"(?=.{3,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+"
)


class ClusterConfig(BaseModel):
    """What is fixed when a token is created."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    size: int = Field(ge=1)
    created_at: float = Field(description="unix time of creation")
    name: str | None = Field(default=None, description="published as <name>.<zone> in DNS")
    bootstrap_until: float | None = Field(
        default=None, description="unix time after which discovery and enrollment are closed"
    )
    clients: int | None = Field(
        default=None, ge=0, le=999, description="client certificate names (default: size)"
    )
    cidrs: tuple[str, ...] = Field(
        default=(), max_length=16, description="extra IP ranges certificates may name"
    )
    dns_suffixes: tuple[str, ...] = Field(
        default=(), max_length=16, description="extra DNS suffixes certificates may name"
    )
    allow_root: bool = Field(
        default=False, description="a client certificate may name etcd's superuser `root`"
    )
    held_by_ca: bool = Field(
        default=False,
        description="moved to its CA's lease by its first enrollment: outlives the token",
    )

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for value in values:
            try:
                checked.append(str(ipaddress.ip_network(value, strict=True)))
            except ValueError:
                raise ValueError(
                    f"cidr {value[:64]!r} is not a network such as 10.0.0.0/24"
                ) from None
        return tuple(checked)

    @field_validator("dns_suffixes")
    @classmethod
    def _suffixes(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for value in values:
            lowered = value.lower().strip(".")
            if not _DOMAIN.fullmatch(lowered):
                raise ValueError(
                    f"dns suffix {value[:64]!r} must be a domain such as etcd.example.com"
                )
            checked.append(lowered)
        return tuple(checked)


class CaRecord(BaseModel):
    """A cluster's CA: the certificate, and its key sealed with the service key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    certificate: str
    sealed_key: str  # base64 of AES-256-GCM(nonce || ciphertext), the token as associated data
    key_id: str  # fingerprint of the service key that sealed it


class CertRecord(BaseModel):
    """An issued certificate, as the inventory lists it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    serial: str  # lowercase hex
    name: str
    profile: str
    sans: tuple[str, ...]
    not_after: float
    fingerprint: str
    issued_at: float
    revoked_at: float | None = None
    spki_sha256: str | None = None  # SHA-256 of the public key (absent in older records)
    superseded_by: str | None = None  # the serial that renewed it (then revoked_at is set too)

    @property
    def revoked_key(self) -> str | None:
        """The key fingerprint this record revokes: an operator's revocation, not a renewal's."""
        return self.spki_sha256 if self.revoked_at is not None and not self.superseded_by else None


class MemberRecord(BaseModel):
    """A member registered through the member API: the URLs its peers and clients use."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()


class NameClaim(BaseModel):
    """Who holds a member name in a cluster (names compared lower-cased): at most one discovery
    registration and one member API record, and both must name the same peer URLs (`discoverd
    join` and the etcd it sets up register the same node, each through its own face)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_urls: tuple[str, ...]  # sorted, without duplicates
    name: str = ""  # as its first holder spelled it; the other face must spell it the same
    member_id: str | None = None  # the discovery registration's key
    api_name: str | None = None  # the member API record's name, as written


@dataclass(frozen=True, slots=True)
class ApiMember:
    name: str
    record: MemberRecord
    revision: int  # etcd mod revision of the record


@dataclass(frozen=True, slots=True)
class Member:
    """One discovery registration. Immutable: registrations are create-only."""

    member_id: str
    value: str  # name=peerURL[,...], as the member sent it and as every face shows it
    created: int  # etcd create revision = v2 createdIndex = modifiedIndex
    registered_at: float | None = None  # unix time it was stored (None: by an older version)
    protocol: str = "v2"  # the discovery protocol it came through: "v2" or "v3"


@dataclass(frozen=True, slots=True)
class Cluster:
    """One token: its config and its registrations, ordered by creation."""

    token: str
    config: ClusterConfig
    created: int  # revision of the config key
    lease: int
    members: tuple[Member, ...] = field(default=())
    api_members: tuple[ApiMember, ...] = field(default=())
    ca: CaRecord | None = None
    certs: tuple[CertRecord, ...] = field(default=())
    # Values derived from this (immutable) cluster: rendered responses, name sets. Not an init
    # field: `replace()` gives every changed cluster a fresh, empty memo.
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

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

    def with_cert(self, record: CertRecord) -> Cluster:
        # The common case, a new one: later than every record held, so none of them (a record
        # keeps its issued_at when it is marked revoked), found without a scan.
        if not self.certs or record.issued_at > self.certs[-1].issued_at:
            return replace(self, certs=(*self.certs, record))
        kept = tuple(c for c in self.certs if c.serial != record.serial)
        return replace(self, certs=tuple(sorted((*kept, record), key=lambda c: c.issued_at)))

    def cert_names(self, profile: str) -> frozenset[str]:
        """Names holding a live (not revoked) certificate of `profile`."""
        key = f"cert-names/{profile}"
        if key not in self.memo:
            self.memo[key] = frozenset(
                c.name for c in self.certs if c.profile == profile and c.revoked_at is None
            )
        names: frozenset[str] = self.memo[key]
        return names

    def revoked_keys(self) -> frozenset[str]:
        """Fingerprints of the public keys of certificates an operator revoked."""
        if "revoked-keys" not in self.memo:
            found = (c.revoked_key for c in self.certs)
            self.memo["revoked-keys"] = frozenset(key for key in found if key)
        keys: frozenset[str] = self.memo["revoked-keys"]
        return keys

    def cert(self, serial: str) -> CertRecord | None:
        return next((c for c in self.certs if c.serial == serial), None)

    def member_names(self) -> set[str]:
        """Every member name registered, through discovery or the member API, lower-cased."""
        v2 = {member.value.partition("=")[0].lower() for member in self.members}
        return v2 | {member.name.lower() for member in self.api_members}
