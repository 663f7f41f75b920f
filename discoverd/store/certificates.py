"""Certificate authority state in etcd, one transaction per change. Keys come from `store.keys`.

A cluster's CA is created once (create-only; a replica that loses the race reads the winner's),
on the token's lease: a CA nobody enrolled with expires with the token. Enrollments (of one
cluster or several, together) are one transaction (`store.enrollment`): each claims
`enrolled/<profile>/<name>` (create-only) and records its certificate, so a name gets one
certificate per profile however many replicas are asked, and each profile's count caps the
names. The first enrollment also moves the cluster (config, CA and the name reservation,
together) from the token's lease to the CA's long one, so renewal, revocation, the CRL and the
cluster's name outlive the bootstrap window. A renewal moves the claim from the old serial to
the new one and revokes the old one (superseded); a revocation marks the record, deletes the
claim and counts one name less.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from discoverd.errors import NotFound, Unavailable
from discoverd.models import CaRecord, CertRecord
from discoverd.store import keys
from discoverd.store.clusters import checked_txn
from discoverd.store.enrollment import (
    Attempt,
    Count,
    Enrollment,
    EnrollRefusal,
    Hold,
    Outcome,
    Place,
    Slot,
    absent,
    put,
)
from discoverd.store.gateway import EtcdGateway, EtcdRejected, b64, decode_kv

COUNT_ATTEMPTS = 50  # compare-and-swap rounds before contention is reported as 503
COUNT_CACHE = 4096  # (token, profile) counts remembered for the next first attempt


class CertificateStore:
    def __init__(self, gateway: EtcdGateway) -> None:
        self._gateway = gateway
        self._counts: OrderedDict[Slot, Count] = OrderedDict()

    async def create_ca(self, token: str, record: CaRecord, lease: int) -> tuple[CaRecord, int]:
        """Store `record` as the cluster's CA unless one exists, on `lease` (the token's: a CA
        alone does not keep a cluster alive). The CA that is stored, and a revision at which
        it is."""
        key = keys.cluster_ca(token)
        txn = {
            "compare": [
                absent(key),
                {"key": b64(keys.cluster_config(token)), "result": "GREATER",
                 "target": "CREATE", "create_revision": 0},
            ],
            "success": [put(key, record.model_dump_json(), lease)],
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
        self, entries: Sequence[Enrollment], places: Mapping[str, Place]
    ) -> list[Outcome]:
        """Enroll every entry that fits, in one transaction: claim each name for its profile,
        record its certificate and count it (at most `limit` names per profile). Per entry, in
        order: the revision, or why not. No (token, profile, name) may appear twice. `places`:
        where each cluster's records go, its lease or a `Hold` (the move to its CA's lease, in
        the same transaction; MOVED if the cluster left `from_lease` meanwhile).

        The first attempt compares the counts this replica saw last; a failed one reads what
        etcd has, and the next attempt compares that."""
        if len({(e.token, e.record.profile, e.record.name) for e in entries}) != len(entries):
            raise ValueError("a name appears twice for one profile in an enrollment batch")
        outcomes: dict[int, Outcome] = {}
        counts = {e.slot: self._counts.get(e.slot, Count()) for e in entries}
        places = dict(places)
        for _ in range(COUNT_ATTEMPTS):
            undecided = [i for i in range(len(entries)) if i not in outcomes]
            attempt = Attempt.plan(entries, undecided, counts, places)
            if not attempt.needed:
                outcomes.update(dict.fromkeys(attempt.over, EnrollRefusal.FULL))
                break
            result = await self._txn(attempt.txn(), "record a certificate")
            revision = int(result["header"]["revision"])
            if result.get("succeeded"):
                for slot, added in attempt.added().items():
                    self._remember(slot, Count.written(counts[slot].value + added))
                outcomes.update(dict.fromkeys(attempt.admitted, revision))
                outcomes.update(dict.fromkeys(attempt.over, EnrollRefusal.FULL))
                break
            failure = attempt.failed(result["responses"], revision)
            for slot, count in failure.counts.items():
                counts[slot] = count
                self._remember(slot, count)
            outcomes.update(dict.fromkeys(failure.claimed, EnrollRefusal.CLAIMED))
            for i in undecided:
                if entries[i].token in failure.gone:
                    outcomes[i] = EnrollRefusal.GONE
                elif entries[i].token in failure.moved:
                    outcomes[i] = EnrollRefusal.MOVED
            for token in failure.unnamed:  # the name went with the token's lease
                places[token] = replace(cast(Hold, places[token]), with_name=False)
        else:
            raise Unavailable("too many concurrent enrollments; try again")
        return [outcomes[i] for i in range(len(entries))]

    def _remember(self, slot: Slot, count: Count) -> None:
        self._counts[slot] = replace(count, fresh=False)
        self._counts.move_to_end(slot)
        while len(self._counts) > COUNT_CACHE:
            self._counts.popitem(last=False)

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
                put(claim, record.serial, lease),
                put(keys.certificate(token, record.serial), record.model_dump_json(), lease),
                put(keys.certificate(token, old.serial), old.model_dump_json(), lease),
            ],
            "failure": [],
        }
        return _revision_if_done(await self._txn(txn, "record a renewal"))

    async def revoke(self, token: str, record: CertRecord, lease: int) -> int:
        """Mark `record` revoked and free its name (its claim, and its place in the profile's
        count), so the node can be enrolled again."""
        claim = keys.enrolled(token, record.profile, record.name)
        marked = put(keys.certificate(token, record.serial), record.model_dump_json(), lease)
        holds = {
            "key": b64(claim),
            "result": "EQUAL",
            "target": "VALUE",
            "value": b64(record.serial),
        }
        slot = (token, record.profile)
        count = self._counts.get(slot, Count())
        for _ in range(COUNT_ATTEMPTS):
            txn = {
                "compare": [holds, *count.compare(token, record.profile)],
                "success": [
                    {"request_delete_range": {"key": b64(claim)}},
                    marked,
                    *count.puts(token, record.profile, -1, lease),
                ],
                "failure": [
                    {"request_range": {"key": b64(claim)}},
                    *Count.reads(token, record.profile),
                ],
            }
            result = await self._txn(txn, "revoke a certificate")
            revision = int(result["header"]["revision"])
            if result.get("succeeded"):
                self._remember(slot, Count.written(count.value - 1))
                return revision
            held, *reads = (r.get("response_range", {}) for r in result["responses"])
            count = Count.read(reads[0], reads[1], revision)
            self._remember(slot, count)
            kvs = held.get("kvs", [])
            if not kvs or decode_kv(kvs[0]).value.decode() != record.serial:
                break  # the name moved on (renewed away): only the record is marked
        txn = {"compare": [], "success": [marked], "failure": []}
        return int((await self._txn(txn, "revoke a certificate"))["header"]["revision"])

    async def _txn(self, txn: dict[str, Any], what: str) -> dict[str, Any]:
        return await checked_txn(self._gateway, txn, what)


def _revision_if_done(result: dict[str, Any]) -> int | None:
    return int(result["header"]["revision"]) if result.get("succeeded") else None
