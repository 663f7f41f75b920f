"""Cluster use cases beyond v2 discovery: register a member's URLs for DNS, view a cluster.

The member API is what makes SRV bootstrap and client SRV records possible: v2 registrations
carry only peer URLs. Knowing the token authorises a write, as with v2 discovery. Records are
create-only (the same record again succeeds); a name is unique per cluster, case aside, and a
record for a name registered through discovery must spell it the same and name that
registration's peer URLs (it is `discoverd join` registering the same node). The number of
names per cluster is capped.

The JSON view says who registered each member, and never mixes the two up: `joined` (a member
API record, written by `discoverd join` before etcd even starts) and `etcd_registered` with its
`protocol` (a v2 or v3 discovery registration, which only the etcd process itself makes).
`registered` and `complete` count names known either way; `registered_by_etcd` counts etcd's own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from discoverd import jsonbody
from discoverd.certs import pki
from discoverd.directory import rules
from discoverd.directory.service import Directory, registration_cap
from discoverd.dns import names
from discoverd.dns.view import published
from discoverd.errors import Conflict, Invalid, NotFound
from discoverd.models import ApiMember, Cluster, Member, MemberRecord
from discoverd.store.clusters import ClusterStore, RegisterOutcome


class MemberRequest(BaseModel):
    """The body of `PUT /api/v1/clusters/<token>/members/<name>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peer_urls: list[str] = Field(min_length=1, max_length=rules.MAX_PEER_URLS)
    client_urls: list[str] = Field(default_factory=list, max_length=rules.MAX_PEER_URLS)


class ClusterService:
    def __init__(
        self,
        discovery: Directory,
        store: ClusterStore,
        zone: str,
        token_ttl: float,
        base_url: str,
        *,
        v3_endpoints: tuple[str, ...] = (),
        v3_tls: bool = False,
    ) -> None:
        self._discovery = discovery
        self._store = store
        self._zone = zone.rstrip(".")
        self._ttl = token_ttl
        self._base_url = base_url
        self._v3_endpoints = v3_endpoints
        self._v3_tls = v3_tls

    async def put_member(self, token: str, name: str, body: bytes) -> ApiMember:
        if not names.is_host_label(name):
            raise Invalid(
                "member name must be a DNS label: letters, digits, '-' or '_', at most 63",
                cause=name[:64],
            )
        request = jsonbody.parse(body, MemberRequest, '{"peer_urls": [...], "client_urls": [...]}')
        for url in (*request.peer_urls, *request.client_urls):
            rules.check_peer_url(url)
        record = MemberRecord(
            peer_urls=tuple(request.peer_urls), client_urls=tuple(request.client_urls)
        )
        cluster = await self._discovery.bootstrap_cluster(token)
        known = cluster.member_names()
        if name.lower() not in known and len(known) >= registration_cap(cluster.config.size):
            raise Invalid(
                f"cluster is full: {len(known)} members for size {cluster.config.size}",
                cause=name,
            )
        registration = await self._store.put_api_member(token, name, record, cluster.lease)
        if registration.outcome is RegisterOutcome.NO_TOKEN:
            raise NotFound("no such cluster", cause=f"/{token}")
        if registration.outcome is RegisterOutcome.NAME_TAKEN:
            raise Conflict(
                f"member name {name} is already registered by {registration.holder}; a member "
                "API record must name the same peer URLs as the member's discovery registration",
                cause=name,
            )
        if registration.outcome is RegisterOutcome.EXISTS:
            raise Conflict(
                f"member {name} is registered with other URLs; members are create-only "
                "(a changed member needs a new name, or a new token)",
                cause=name,
            )
        await self._discovery.settle(registration.revision)
        return ApiMember(name, record, registration.revision)

    async def view(self, token: str) -> dict[str, Any]:
        return self.render(await self._discovery.cluster(token))

    def _v3(self, token: str) -> dict[str, Any]:
        """What an etcd >= 3.6 member needs for v3 discovery through this service."""
        return {
            "token": token,
            "endpoints": list(self._v3_endpoints),
            "tls": self._v3_tls,
            "flags": _v3_flags(token, self._v3_endpoints, self._v3_tls),
        }

    def render(self, cluster: Cluster) -> dict[str, Any]:
        """The JSON view of a cluster: what `discoverd status` and operators read."""
        config = cluster.config
        members = published(cluster).members
        domains = [f"{rules.cluster_label(cluster.token)}.{self._zone}"]
        if config.name:
            domains.append(f"{config.name}.{self._zone}")
        created = datetime.fromtimestamp(config.created_at, UTC)
        expires = datetime.fromtimestamp(config.created_at + self._ttl, UTC)
        by_etcd = {m.value.partition("=")[0]: m for m in cluster.members}
        joined = {m.name for m in cluster.api_members}
        return {
            "token": cluster.token,
            "discovery_url": f"{self._base_url}/{cluster.token}",
            "discovery_v3": self._v3(cluster.token),
            "name": config.name,
            "size": config.size,
            "registered": len(members),
            "complete": len(members) >= config.size,
            "joined": len(joined),
            "registered_by_etcd": len(by_etcd),
            "created_at": created.isoformat(),
            "expires_at": expires.isoformat(),
            "members": [
                {
                    "name": member.name,
                    "peer_urls": list(member.peer_urls),
                    "client_urls": list(member.client_urls),
                    **_registrations(member.name, joined, by_etcd),
                }
                for member in members
            ],
            "dns": {
                "domains": domains,
                "srv": sorted(_srv_names(members, domains, config.name)),
            },
            "ca_sha256": _ca_fingerprint(cluster),
            "certificates": [
                {
                    "serial": cert.serial,
                    "name": cert.name,
                    "profile": cert.profile,
                    "sans": list(cert.sans),
                    "not_after": datetime.fromtimestamp(cert.not_after, UTC).isoformat(),
                    "sha256": cert.fingerprint,
                    "revoked": cert.revoked_at is not None,
                }
                for cert in cluster.certs
            ],
        }


def _registrations(name: str, joined: set[str], by_etcd: dict[str, Member]) -> dict[str, Any]:
    """Who registered a member: `discoverd join` (the member API: "joined") and etcd itself
    (a v2 or v3 discovery registration exists only once the etcd process registered)."""
    etcd = by_etcd.get(name)
    return {
        "joined": name in joined,
        "etcd_registered": etcd is not None,
        "protocol": etcd.protocol if etcd else None,
        "discovery_id": etcd.member_id if etcd else None,
    }


def _v3_flags(token: str, endpoints: tuple[str, ...], tls: bool) -> str:
    scheme = "https://" if tls else ""
    listed = ",".join(scheme + endpoint for endpoint in endpoints)
    return f"--discovery-token={token} --discovery-endpoints={listed}"


def _ca_fingerprint(cluster: Cluster) -> str | None:
    if cluster.ca is None:
        return None
    return pki.fingerprint(pki.load_cert(cluster.ca.certificate))


def _srv_names(members: Any, domains: list[str], suffix: str | None) -> set[str]:
    found: set[str] = set()
    for member in members:
        for service, urls in (("server", member.peer_urls), ("client", member.client_urls)):
            for url in urls:
                tls = url.startswith("https:")
                for domain in domains:
                    for variant in ("", suffix) if suffix else ("",):
                        label = names.srv_label(service, tls, variant or "").decode()
                        found.add(f"{label}._tcp.{domain}")
    return found
