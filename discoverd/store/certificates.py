"""Certificate authority state in etcd, one transaction per change. Keys come from `store.keys`.

A cluster's CA is created once (create-only; a replica that loses the race reads the winner's),
on the token's lease: a CA nobody enrolled with expires with the token. An enrollment claims
`enrolled/<profile>/<name>` and records the certificate in the same transaction, so a name gets
one certificate per profile however many replicas are asked. The first enrollment also moves
the cluster (config, CA and the name reservation, together) from the token's lease to the CA's
long one, so renewal, revocation, the CRL and the cluster's name outlive the bootstrap window.
A renewal moves the claim from the old serial to the new one and revokes the old one
(superseded); a revocation marks the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from discoverd.errors import NotFound, Unavailable
from discoverd.models import CaRecord, CertRecord, ClusterConfig
from discoverd.store import keys
from discoverd.store.clusters import checked_txn
from discoverd.store.gateway import EtcdGateway, EtcdRejected, KeyValue, b64, decode_kv

ROSTER_ATTEMPTS = 50  # compare-and-swap rounds before contention is reported as 503


def _absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}


def _put(key: str, value: str, lease: int) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}


@dataclass(frozen=True, slots=True)
class Hold:
    """Move a cluster from its token's lease (`from_lease`) to its CA's (`lease`): the config,
    the CA and the name reservation, in the enrollment's transaction."""

    config: ClusterConfig
    ca: CaRecord
    from_lease: int
    lease: int
    with_name: bool = True  # False when the name is no longer this cluster's (older data)

    def compare(self, token: str) -> list[dict[str, Any]]:
        config = {"key": b64(keys.cluster_config(token)), "result": "EQUAL", "target": "LEASE",
                  "lease": self.from_lease}  # fmt: skip
        if not self.name:
            return [config]
        name = {"key": b64(keys.cluster_name(self.name)), "result": "EQUAL", "target": "VALUE",
                "value": b64(token)}  # fmt: skip
        return [config, name]

    def puts(self, token: str) -> list[dict[str, Any]]:
        held = self.config.model_copy(update={"held_by_ca": True})
        puts = [
            _put(keys.cluster_config(token), held.model_dump_json(), self.lease),
            _put(keys.cluster_ca(token), self.ca.model_dump_json(), self.lease),
        ]
        if self.name:
            puts.append(_put(keys.cluster_name(self.name), token, self.lease))
        return puts

    @property
    def name(self) -> str | None:
        return self.config.name if self.with_name else None


class CertificateStore:
    def __init__(self, gateway: EtcdGateway) -> None:
        self._gateway = gateway

    async def create_ca(self, token: str, record: CaRecord, lease: int) -> tuple[CaRecord, int]:
        """Store `record` as the cluster's CA unless one exists, on `lease` (the token's: a CA
        alone does not keep a cluster alive). The CA that is stored, and a revision at which
        it is."""
        key = keys.cluster_ca(token)
        txn = {
            "compare": [
                _absent(key),
                {"key": b64(keys.cluster_config(token)), "result": "GREATER",
                 "target": "CREATE", "create_revision": 0},
            ],
            "success": [_put(key, record.model_dump_json(), lease)],
            "failure": [{"request_range": {"key": b64(key)}}],
        }  # fmt: skip
        result = await self._txn(txn, "store a CA")
        revision = int(result["header"]["revision"])
        if result.get("succeeded"):
            return record, revision
        kvs = result["responses"][0].get("response_range", {}).get("kvs", [])
        if not kvs:
            raise NotFound("Key not found", cause=f"/{token}")
        return CaRecord.model_validate_json(decode_kv(kvs[0]).value), revision

    async def grant_lease(self, ttl: int) -> int:
        try:
            return await self._gateway.grant_lease(ttl)
        except EtcdRejected as exc:
            raise Unavailable(f"etcd refused a lease: {exc.detail}") from exc

    async def revoke_lease(self, lease: int) -> None:
        await self._gateway.call(
            lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease})
        )

    async def enroll(
        self, token: str, record: CertRecord, lease: int, limit: int, hold: Hold | None = None
    ) -> int | EnrollRefusal:
        """Claim the name for the profile, add it to the profile's roster (at most `limit`
        names) and record the certificate, in one transaction; the revision, or why not.
        With `hold`, the same transaction moves the cluster to the CA's lease (and the records
        go on that lease); MOVED if it is no longer on `hold.from_lease`.

        The roster is changed by compare-and-swap, so replicas enrolling different names at
        the same moment can never take more than `limit` between them."""
        claim = keys.enrolled(token, record.profile, record.name)
        roster = keys.roster(token, record.profile)
        names, version = await self._roster(roster)
        for _ in range(ROSTER_ATTEMPTS):
            if record.name not in names and len(names) >= limit:
                return EnrollRefusal.FULL
            listed = json.dumps(sorted({*names, record.name}))
            on = hold.lease if hold is not None else lease
            txn = {
                "compare": [
                    _absent(claim),
                    _unchanged(roster, version),
                    *(hold.compare(token) if hold is not None else []),
                ],
                "success": [
                    _put(claim, record.serial, on),
                    _put(keys.certificate(token, record.serial), record.model_dump_json(), on),
                    _put(roster, listed, on),
                    *(hold.puts(token) if hold is not None else []),
                ],
                "failure": [
                    {"request_range": {"key": b64(claim)}},
                    {"request_range": {"key": b64(roster)}},
                    {"request_range": {"key": b64(keys.cluster_config(token))}},
                    *(
                        [{"request_range": {"key": b64(keys.cluster_name(hold.name))}}]
                        if hold is not None and hold.name
                        else []
                    ),
                ],
            }
            result = await self._txn(txn, "record a certificate")
            if result.get("succeeded"):
                return int(result["header"]["revision"])
            claimed, current, config, *name = (
                r.get("response_range", {}).get("kvs", []) for r in result["responses"]
            )
            if not config:
                raise NotFound("the discovery token has expired", cause=f"/{token}")
            if claimed:
                return EnrollRefusal.CLAIMED
            if hold is not None:
                if decode_kv(config[0]).lease != hold.from_lease:
                    return EnrollRefusal.MOVED
                if name and (not name[0] or decode_kv(name[0][0]).value != token.encode()):
                    hold = replace(hold, with_name=False)  # the name went with the old lease
            names, version = _roster_of(current)
        raise Unavailable("too many concurrent enrollments; try again")

    async def _roster(self, key: str) -> tuple[set[str], int]:
        _, kv = await self._gateway.get(key)
        return _roster_of([] if kv is None else [kv])

    async def renew(
        self, token: str, old: CertRecord, record: CertRecord, lease: int
    ) -> int | None:
        """Move the claim from `old` to the new certificate and record `old` as superseded
        (revoked, with the new serial), in one transaction; the revision, or None if the
        claim moved already."""
        claim = keys.enrolled(token, record.profile, record.name)
        txn = {
            "compare": [
                {"key": b64(claim), "result": "EQUAL", "target": "VALUE", "value": b64(old.serial)}
            ],
            "success": [
                _put(claim, record.serial, lease),
                _put(keys.certificate(token, record.serial), record.model_dump_json(), lease),
                _put(keys.certificate(token, old.serial), old.model_dump_json(), lease),
            ],
            "failure": [],
        }
        return _revision_if_done(await self._txn(txn, "record a renewal"))

    async def revoke(self, token: str, record: CertRecord, lease: int) -> int:
        """Mark `record` revoked and free its name (claim and roster entry), so the node can
        be enrolled again."""
        claim = keys.enrolled(token, record.profile, record.name)
        roster = keys.roster(token, record.profile)
        put = _put(keys.certificate(token, record.serial), record.model_dump_json(), lease)
        holds = {
            "key": b64(claim),
            "result": "EQUAL",
            "target": "VALUE",
            "value": b64(record.serial),
        }
        for _ in range(ROSTER_ATTEMPTS):
            names, version = await self._roster(roster)
            listed = json.dumps(sorted(names - {record.name}))
            txn = {
                "compare": [holds, _unchanged(roster, version)],
                "success": [
                    {"request_delete_range": {"key": b64(claim)}},
                    put,
                    _put(roster, listed, lease),
                ],
                "failure": [{"request_range": {"key": b64(claim)}}],
            }
            result = await self._txn(txn, "revoke a certificate")
            if result.get("succeeded"):
                return int(result["header"]["revision"])
            kvs = result["responses"][0].get("response_range", {}).get("kvs", [])
            if not kvs or decode_kv(kvs[0]).value.decode() != record.serial:
                break  # the name moved on (renewed away): only the record is marked
        txn = {"compare": [], "success": [put], "failure": []}
        return int((await self._txn(txn, "revoke a certificate"))["header"]["revision"])

    async def _txn(self, txn: dict[str, Any], what: str) -> dict[str, Any]:
        return await checked_txn(self._gateway, txn, what)


def _revision_if_done(result: dict[str, Any]) -> int | None:
    return int(result["header"]["revision"]) if result.get("succeeded") else None


class EnrollRefusal(Enum):
    CLAIMED = "claimed"  # the name holds a certificate of this profile already
    FULL = "full"  # the profile's roster is full
    MOVED = "moved"  # the cluster left the lease the enrollment expected (another one held it)


def _unchanged(key: str, version: int) -> dict[str, Any]:
    """Compare: `key` is still at mod revision `version` (0: still absent)."""
    if version == 0:
        return _absent(key)
    return {"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": version}


def _roster_of(kvs: list[Any]) -> tuple[set[str], int]:
    if not kvs:
        return set(), 0
    kv = kvs[0] if isinstance(kvs[0], KeyValue) else decode_kv(kvs[0])
    return set(json.loads(kv.value)), kv.mod_revision
