"""Cluster writes and authoritative reads, as etcd transactions. Keys come from `store.keys`.

Every write is one transaction, so several discoverd replicas on one etcd can never interleave:
a token is created only if its key is absent, and a registration only if the token exists, the
member key does not (create-only, like etcd's `prevExist=false`) and the member name's claim is
as it was read (names are unique per cluster, case aside, across discovery and the member API).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import ValidationError

from discoverd.errors import NotFound, Unavailable
from discoverd.models import ClusterConfig, Member, MemberRecord, NameClaim
from discoverd.store import keys
from discoverd.store.gateway import (
    EtcdGateway,
    EtcdRejected,
    KeyValue,
    b64,
    decode_kv,
    prefix_end,
)
from discoverd.store.registry import member_from

logger = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 4  # a name claim read, then changed by another writer, this many times: 503


class LeaseGone(Unavailable):
    """The lease a write was to be attached to no longer exists in etcd."""


class RegisterOutcome(Enum):
    CREATED = "created"
    EXISTS = "exists"
    MIXED = "mixed"  # the token is bootstrapping through the other discovery protocol
    NO_TOKEN = "no-token"  # noqa: S105 - an outcome, not a secret
    NAME_TAKEN = "name-taken"  # another registration holds the member name


@dataclass(frozen=True, slots=True)
class Registration:
    outcome: RegisterOutcome
    revision: int  # store revision of the transaction
    member: Member | None = None  # the new member, or the one that already exists
    holder: str = ""  # NAME_TAKEN: who holds the name, in words


@dataclass(frozen=True, slots=True)
class StoredCluster:
    config: ClusterConfig
    created: int
    lease: int


class ClusterStore:
    """The cluster operations that must reach etcd."""

    def __init__(self, gateway: EtcdGateway) -> None:
        self._gateway = gateway

    async def create_clusters(self, configs: dict[str, ClusterConfig], lease: int) -> int | None:
        """Create every token in one transaction; the revision, or None if one already
        existed (then nothing was written)."""
        compare = []
        success = []
        for token, config in configs.items():
            key = b64(keys.cluster_config(token))
            compare.append(
                {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            )
            put = {"key": key, "value": b64(config_json(config)), "lease": lease}
            success.append({"request_put": put})
        txn = {"compare": compare, "success": success, "failure": []}
        result = await self._txn(txn, "create tokens")
        if not result.get("succeeded"):
            return None
        return int(result["header"]["revision"])

    async def create_named_cluster(
        self, token: str, config: ClusterConfig, lease: int
    ) -> int | None:
        """Create a token that also claims `config.name`; None if the name is taken."""
        assert config.name is not None
        name_key = b64(keys.cluster_name(config.name))
        config_key = b64(keys.cluster_config(token))
        txn = {
            "compare": [
                {"key": name_key, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                {"key": config_key, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
            ],
            "success": [
                {"request_put": {"key": name_key, "value": b64(token), "lease": lease}},
                {
                    "request_put": {
                        "key": config_key,
                        "value": b64(config_json(config)),
                        "lease": lease,
                    }
                },
            ],
            "failure": [],
        }
        result = await self._txn(txn, "create a cluster")
        return int(result["header"]["revision"]) if result.get("succeeded") else None

    async def put_api_member(
        self, token: str, name: str, record: MemberRecord, lease: int
    ) -> Registration:
        """Create a member API record, create-only like a discovery registration: putting the
        same record again is a success (join re-runs), a different one is EXISTS, so a token
        holder cannot repoint another member's DNS records. The name is claimed in the same
        transaction: NAME_TAKEN if another record holds it (case aside), or a discovery
        registration with other peer URLs."""
        key = keys.api_member(token, name)
        urls = tuple(sorted(set(record.peer_urls)))

        def claim(current: NameClaim | None) -> NameClaim | None:
            if current is None:
                return NameClaim(peer_urls=urls, name=name, api_name=name)
            if current.api_name not in (None, name) or not _same_node(current, name, urls):
                return None
            return current.model_copy(update={"api_name": name})

        revision, outcome, existing, holder = await self._create_claimed(
            token,
            key,
            record.model_dump_json(),
            lease,
            name=name,
            claim=claim,
            what="register a member",
        )
        same = existing is not None and MemberRecord.model_validate_json(existing.value) == record
        return Registration(RegisterOutcome.CREATED if same else outcome, revision, holder=holder)

    async def register(
        self,
        token: str,
        member_id: str,
        value: str,
        lease: int,
        *,
        now: float,
        protocol: str = "v2",
    ) -> Registration:
        """Create `<protocol>/<member_id>` under an existing token, attached to the token's
        lease and stamped with `now`, and claim its member name in the same transaction:
        NAME_TAKEN if another registration holds the name (case aside), or a member API record
        with other peer URLs. MIXED if the token has a registration through the other discovery
        protocol: etcd folds the discovery URL (v2) or token (v3) into the cluster ID, so
        members of the two can never form one cluster."""
        key = keys.discovery_member(token, member_id, protocol)
        other = keys.discovery_members(token, "v2" if protocol == "v3" else "v3")
        name = value.partition("=")[0]
        urls = tuple(sorted({pair.partition("=")[2] for pair in value.split(",")}))

        def claim(current: NameClaim | None) -> NameClaim | None:
            if current is None:
                return NameClaim(peer_urls=urls, name=name, member_id=member_id)
            if current.member_id not in (None, member_id) or not _same_node(current, name, urls):
                return None
            return current.model_copy(update={"member_id": member_id})

        stored = json.dumps({"value": value, "at": now}, separators=(",", ":"))
        try:
            revision, outcome, existing, holder = await self._create_claimed(
                token, key, stored, lease, name=name, claim=claim, what="register", absent=other
            )
        except LeaseGone as exc:  # the token expired between read and write
            raise NotFound("the discovery token has expired") from exc
        if outcome is RegisterOutcome.CREATED:
            member = Member(member_id, value, revision, registered_at=now, protocol=protocol)
            return Registration(outcome, revision, member)
        if existing is None:
            return Registration(outcome, revision, holder=holder)
        return Registration(outcome, revision, member_from(member_id, existing, protocol))

    async def _create_claimed(
        self,
        token: str,
        key: str,
        value: str,
        lease: int,
        *,
        name: str,
        claim: Callable[[NameClaim | None], NameClaim | None],
        what: str,
        absent: str | None = None,
    ) -> tuple[int, RegisterOutcome, KeyValue | None, str]:
        """Create `key` under an existing token and claim member `name` for it, in one
        transaction that compares the claim as it was read (optimistic: a lost race reads the
        claim again). CREATED, NO_TOKEN, EXISTS with the key-value that is there, MIXED if a
        key exists under the prefix `absent`, or NAME_TAKEN with who holds the name."""
        # A compare over a range holds only if it holds for every key in it: with create
        # revision 0, only if the range is empty.
        spans = (
            [] if absent is None else [{"key": b64(absent), "range_end": b64(prefix_end(absent))}]
        )
        config_key = b64(keys.cluster_config(token))
        child = b64(key)
        name_key = b64(keys.member_name(token, name))
        seen: KeyValue | None = None
        wanted = claim(None)
        for _ in range(CLAIM_ATTEMPTS):
            assert wanted is not None
            if seen is None:
                name_compare = {"target": "CREATE", "create_revision": 0}
            else:
                name_compare = {"target": "MOD", "mod_revision": seen.mod_revision}
            txn = {
                "compare": [
                    {"key": config_key, "result": "GREATER", "target": "CREATE",
                     "create_revision": 0},
                    {"key": child, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                    {"key": name_key, "result": "EQUAL", **name_compare},
                    *({**span, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
                      for span in spans),
                ],
                "success": [
                    {"request_put": {"key": child, "value": b64(value), "lease": lease}},
                    {"request_put": {"key": name_key, "value": b64(wanted.model_dump_json()),
                                     "lease": lease}},
                ],
                "failure": [
                    {"request_range": {"key": config_key}},
                    {"request_range": {"key": child}},
                    {"request_range": {"key": name_key}},
                    *({"request_range": {**span, "count_only": True}} for span in spans),
                ],
            }  # fmt: skip
            result = await self._txn(txn, what)
            revision = int(result["header"]["revision"])
            if result.get("succeeded"):
                return revision, RegisterOutcome.CREATED, None, ""
            responses = result.get("responses", [])
            config_kvs, child_kvs, name_kvs = (_range_kvs(r) for r in responses[:3])
            if not config_kvs:
                return revision, RegisterOutcome.NO_TOKEN, None, ""
            if child_kvs:
                return revision, RegisterOutcome.EXISTS, child_kvs[0], ""
            if any(int(r.get("response_range", {}).get("count", 0)) for r in responses[3:]):
                return revision, RegisterOutcome.MIXED, None, ""
            seen = name_kvs[0] if name_kvs else None
            current = _claim_from(seen)
            wanted = claim(current)
            if wanted is None:
                assert current is not None
                return revision, RegisterOutcome.NAME_TAKEN, None, _holder(current)
        raise Unavailable(f"the claim on member name {name!r} keeps changing; retry")

    async def _txn(self, txn: dict[str, Any], what: str) -> dict[str, Any]:
        return await checked_txn(self._gateway, txn, what)

    async def read_cluster(self, token: str) -> tuple[int, StoredCluster | None]:
        """A linearizable read of one token's config, with the revision it was read at."""
        try:
            revision, kv = await self._gateway.get(keys.cluster_config(token))
        except EtcdRejected as exc:
            raise Unavailable(f"etcd refused a read: {exc.detail}") from exc
        if kv is None:
            return revision, None
        config = ClusterConfig.model_validate_json(kv.value)
        return revision, StoredCluster(config, kv.create_revision, kv.lease)

    async def grant_lease(self, ttl: int) -> int:
        try:
            return await self._gateway.grant_lease(ttl)
        except EtcdRejected as exc:
            raise Unavailable(f"etcd refused a lease: {exc.detail}") from exc


def config_json(config: ClusterConfig) -> str:
    """A token's stored config, whoever writes it (creation, the CA taking it over): the
    fields that differ from their defaults, which every version reads alike
    (`{"size":3,"created_at":...,"bootstrap_until":...}` for most). Every token costs etcd a
    JSON decode of it, a write, and a watch event that carries it."""
    return config.model_dump_json(exclude_defaults=True)


def _claim_from(kv: KeyValue | None) -> NameClaim | None:
    if kv is None:
        return None
    try:
        return NameClaim.model_validate_json(kv.value)
    except ValidationError:  # unreadable: nobody can take the name over
        logger.error("unreadable member name claim (revision %d)", kv.mod_revision)
        return NameClaim(peer_urls=())


def _same_node(claim: NameClaim, name: str, urls: tuple[str, ...]) -> bool:
    """Whether a registration through the other face is the claim's node: the same peer URLs
    and the same spelling of the name (DNS would publish two spellings as two members)."""
    return claim.peer_urls == urls and claim.name in ("", name)


def _holder(claim: NameClaim) -> str:
    """Who holds a name, in words for the refusal."""
    urls = ", ".join(claim.peer_urls)
    if claim.member_id is not None:
        return f"discovery registration {claim.member_id} ({claim.name or '?'} at {urls})"
    if claim.api_name is not None:
        return f"member API record {claim.api_name} (at {urls})"
    return "another registration"


def _range_kvs(response: dict[str, Any]) -> list[KeyValue]:
    return [decode_kv(item) for item in response.get("response_range", {}).get("kvs", [])]


async def checked_txn(gateway: EtcdGateway, txn: dict[str, Any], what: str) -> dict[str, Any]:
    """Run a transaction; etcd's refusals become LeaseGone (the lease expired) or Unavailable."""
    try:
        return await gateway.txn(txn)
    except EtcdRejected as exc:
        if "lease not found" in exc.detail:
            raise LeaseGone(exc.detail) from exc
        raise Unavailable(f"etcd refused to {what}: {exc.detail}") from exc
