"""The batches of the enrollment group commit: one name once, and never more operations than
etcd takes in a transaction, whatever mix of clusters (`take_batch`, `store.enrollment`); a
batch with an expired cluster in it still records the others (real etcd)."""

from __future__ import annotations

import asyncio
import time

import pytest

from discoverd import appkeys
from discoverd.certs.enrolling import BATCH_MAX, take_batch
from discoverd.models import CaRecord, CertRecord, ClusterConfig
from discoverd.store.certificates import CertificateStore
from discoverd.store.enrollment import (
    MAX_OPS,
    Attempt,
    Count,
    Enrollment,
    EnrollRefusal,
    Hold,
)
from tests.certs.test_handlers import new_token


def entry(token: int, name: str, profile: str = "peer", limit: int = 999) -> Enrollment:
    record = CertRecord(serial=f"{token:x}{name}", name=name, profile=profile, sans=("10.0.0.1",),
                        not_after=0.0, fingerprint="", issued_at=0.0)  # fmt: skip
    return Enrollment(f"{token:032x}", record, limit)


def hold(name: str | None) -> Hold:
    config = ClusterConfig(size=3, created_at=0.0, name=name)
    return Hold(config, CaRecord(certificate="", sealed_key="", key_id=""), 1, 2)


PENDING = {
    "one cluster": [entry(1, f"m{i}") for i in range(200)],
    "a cluster each": [entry(i, "m0") for i in range(200)],
    "three profiles each": [entry(i, "m0", p) for i in range(60) for p in ("peer", "server", "client")],
    "the same name again": [entry(1, "m0"), entry(1, "m0"), entry(1, "m1"), entry(2, "m0")],
}  # fmt: skip


@pytest.mark.parametrize("held", [True, False], ids=["held", "first enrollments"])
@pytest.mark.parametrize("case", list(PENDING))
def test_a_batch_fits_one_transaction(case, held):
    loop = asyncio.new_event_loop()
    try:
        pending = [(e, loop.create_future()) for e in PENDING[case]]
        batches = []
        while pending:
            batch = take_batch(pending, lambda _: held)
            assert batch, "a batch takes at least the oldest request"
            batches.append([e for e, _ in batch])
    finally:
        loop.close()
    assert sum(map(len, batches)) == len(PENDING[case])
    for batch in batches:
        assert len(batch) <= BATCH_MAX
        assert len({(e.token, e.record.profile, e.record.name) for e in batch}) == len(batch)
        tokens = {e.token for e in batch}
        places = {t: 1 if held else hold("prod") for t in tokens}
        counts = {e.slot: Count() for e in batch}  # no count yet: the largest transaction
        txn = Attempt.plan(batch, range(len(batch)), counts, places).txn()
        assert max(len(ops) for ops in txn.values()) <= MAX_OPS, case


@pytest.mark.parametrize("first", [True, False], ids=["first enrollment", "held"])
async def test_an_expired_cluster_does_not_fail_the_batch(client, first):
    """The expired cluster's lease is gone: a put on it would fail the whole transaction."""
    token = await new_token(client)
    cluster = await client.server.app[appkeys.DIRECTORY].cluster(token)
    store = CertificateStore(client.server.app[appkeys.GATEWAY])
    record = entry(1, "infra0").record.model_copy(update={"issued_at": time.time()})
    live, gone = Enrollment(token, record, 3), entry(2, "infra0", limit=3)
    lease = await store.grant_lease(3600)
    ca = CaRecord(certificate="x", sealed_key="y", key_id="z")
    places = {
        token: Hold(cluster.config, ca, cluster.lease, lease),
        gone.token: hold(None) if first else 1,  # leases that do not exist
    }
    outcomes = await store.enroll([gone, live], places)
    assert outcomes[0] is EnrollRefusal.GONE
    assert isinstance(outcomes[1], int)
