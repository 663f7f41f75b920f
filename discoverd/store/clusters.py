"""Cluster writes and authoritative reads, as etcd transactions. Keys come from `store.keys`.

Every write is one transaction, so several discoverd replicas on one etcd can never interleave:
a token is created only if its key is absent, and a registration only if the token exists and
the member key does not (create-only, like etcd's `prevExist=false`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from discoverd.errors import NotFound, Unavailable
from discoverd.models import ClusterConfig, Member, MemberRecord
from discoverd.store import keys
from discoverd.store.gateway import (
    EtcdGateway,
    EtcdRejected,
    KeyValue,
    b64,
    decode_kv,
    prefix_end,
)

logger = logging.getLogger(__name__)


class LeaseGone(Unavailable):
    """The lease a write was to be attached to no longer exists in etcd."""


class RegisterOutcome(Enum):
    CREATED = "created"
    EXISTS = "exists"
    MIXED = "mixed"  # the token is bootstrapping through the other discovery protocol
    NO_TOKEN = "no-token"  # noqa: S105 - an outcome, not a secret


@dataclass(frozen=True, slots=True)
class Registration:
    outcome: RegisterOutcome
    revision: int  # store revision of the transaction
    member: Member | None = None  # the new member, or the one that already exists


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
            put = {"key": key, "value": b64(config.model_dump_json()), "lease": lease}
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
                        "value": b64(config.model_dump_json()),
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
        """Create a member API record, create-only like a v2 registration: putting the same
        record again is a success (join re-runs), a different one is EXISTS, so a token holder
        cannot repoint another member's DNS records."""
        key = keys.api_member(token, name)
        revision, outcome, existing = await self._create_child(
            token, key, record.model_dump_json(), lease, "register a member"
        )
        same = existing is not None and MemberRecord.model_validate_json(existing.value) == record
        return Registration(RegisterOutcome.CREATED if same else outcome, revision)

    async def register(
        self, token: str, member_id: str, value: str, lease: int, protocol: str = "v2"
    ) -> Registration:
        """Create `<protocol>/<member_id>` under an existing token, attached to the token's
        lease, unless the token has a registration through the other protocol (MIXED): etcd
        folds the discovery URL (v2) or token (v3) into the cluster ID, so members of the two
        protocols can never form one cluster."""
        key = keys.discovery_member(token, member_id, protocol)
        other = keys.discovery_members(token, "v2" if protocol == "v3" else "v3")
        try:
            revision, outcome, existing = await self._create_child(
                token, key, value, lease, "register", absent_prefix=other
            )
        except LeaseGone as exc:  # the token expired between read and write
            raise NotFound("the discovery token has expired") from exc
        if outcome is RegisterOutcome.CREATED:
            return Registration(outcome, revision, Member(member_id, value, revision, protocol))
        if existing is None:
            return Registration(outcome, revision)
        text = existing.value.decode(errors="replace")
        member = Member(member_id, text, existing.create_revision, protocol)
        return Registration(outcome, revision, member)

    async def _create_child(
        self,
        token: str,
        key: str,
        value: str,
        lease: int,
        what: str,
        *,
        absent_prefix: str | None = None,
    ) -> tuple[int, RegisterOutcome, KeyValue | None]:
        """Create `key` under an existing token, in one transaction: CREATED, NO_TOKEN, EXISTS
        with the key-value that is there, or MIXED when a key exists under `absent_prefix`."""
        config_key = b64(keys.cluster_config(token))
        child = b64(key)
        compare = [
            {"key": config_key, "result": "GREATER", "target": "CREATE", "create_revision": 0},
            {"key": child, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
        ]
        failure: list[dict[str, Any]] = [
            {"request_range": {"key": config_key}},
            {"request_range": {"key": child}},
        ]
        if absent_prefix is not None:
            # A compare over a range holds only if every key in it does: with create revision 0,
            # only if the range is empty.
            span = {"key": b64(absent_prefix), "range_end": b64(prefix_end(absent_prefix))}
            compare.append({**span, "result": "EQUAL", "target": "CREATE", "create_revision": 0})
            failure.append({"request_range": {**span, "count_only": True}})
        txn = {
            "compare": compare,
            "success": [{"request_put": {"key": child, "value": b64(value), "lease": lease}}],
            "failure": failure,
        }
        result = await self._txn(txn, what)
        revision = int(result["header"]["revision"])
        if result.get("succeeded"):
            return revision, RegisterOutcome.CREATED, None
        responses = result.get("responses", [])
        config_kvs, child_kvs = _range_kvs(responses[0]), _range_kvs(responses[1])
        if not config_kvs:
            return revision, RegisterOutcome.NO_TOKEN, None
        if child_kvs:
            return revision, RegisterOutcome.EXISTS, child_kvs[0]
        return revision, RegisterOutcome.MIXED, None

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
