"""Certificate authority state in etcd, one transaction per change. Keys come from `store.keys`.

A cluster's CA is created once (create-only; a replica that loses the race reads the winner's).
An enrollment claims `enrolled/<profile>/<name>` and records the certificate in the same
transaction, so a name gets one certificate per profile however many replicas are asked; a
renewal moves the claim from the old serial to the new one; a revocation marks the record.
"""

from __future__ import annotations

import json
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


class CertificateStore:
    def __init__(self, gateway: EtcdGateway) -> None:
        self._gateway = gateway

    async def create_ca(
        self, token: str, record: CaRecord, config: ClusterConfig, pki_lease: int
    ) -> tuple[CaRecord, int]:
        """Store `record` as the cluster's CA unless one exists, and move the cluster's config
        to `pki_lease` (as long as the CA lives) in the same transaction, so that renewal,
        revocation and the CRL outlive the token's bootstrap window. The CA that is stored,
        and a revision at which it is."""
        key = keys.cluster_ca(token)
        txn = {
            "compare": [
                _absent(key),
                {"key": b64(keys.cluster_config(token)), "result": "GREATER",
                 "target": "CREATE", "create_revision": 0},
            ],
            "success": [
                _put(key, record.model_dump_json(), pki_lease),
                _put(keys.cluster_config(token), config.model_dump_json(), pki_lease),
            ],
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
        self, token: str, record: CertRecord, lease: int, limit: int
    ) -> int | EnrollRefusal:
        """Claim the name for the profile, add it to the profile's roster (at most `limit`
        names) and record the certificate, in one transaction; the revision, or why not.

        The roster is changed by compare-and-swap, so replicas enrolling different names at
        the same moment can never take more than `limit` between them."""
        claim = keys.enrolled(token, record.profile, record.name)
        roster = keys.roster(token, record.profile)
        names, version = await self._roster(roster)
        for _ in range(ROSTER_ATTEMPTS):
            if record.name not in names and len(names) >= limit:
                return EnrollRefusal.FULL
            listed = json.dumps(sorted({*names, record.name}))
            txn = {
                "compare": [_absent(claim), _unchanged(roster, version)],
                "success": [
                    _put(claim, record.serial, lease),
                    _put(keys.certificate(token, record.serial), record.model_dump_json(), lease),
                    _put(roster, listed, lease),
                ],
                "failure": [
                    {"request_range": {"key": b64(claim)}},
                    {"request_range": {"key": b64(roster)}},
                ],
            }
            result = await self._txn(txn, "record a certificate")
            if result.get("succeeded"):
                return int(result["header"]["revision"])
            claimed, current = (
                r.get("response_range", {}).get("kvs", []) for r in result["responses"]
            )
            if claimed:
                return EnrollRefusal.CLAIMED
            names, version = _roster_of(current)
        raise Unavailable("too many concurrent enrollments; try again")

    async def _roster(self, key: str) -> tuple[set[str], int]:
        _, kv = await self._gateway.get(key)
        return _roster_of([] if kv is None else [kv])

    async def renew(
        self, token: str, old_serial: str, record: CertRecord, lease: int
    ) -> int | None:
        """Move the claim from `old_serial` to the new certificate; the revision, or None if
        it moved already."""
        claim = keys.enrolled(token, record.profile, record.name)
        txn = {
            "compare": [
                {"key": b64(claim), "result": "EQUAL", "target": "VALUE", "value": b64(old_serial)}
            ],
            "success": [
                _put(claim, record.serial, lease),
                _put(keys.certificate(token, record.serial), record.model_dump_json(), lease),
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
