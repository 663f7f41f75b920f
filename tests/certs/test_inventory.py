"""The inventory index an enrollment checks against: the same answers as a scan of the
cluster's records, whether it was extended by new records or rebuilt after a change."""

from __future__ import annotations

import pytest

from discoverd.certs.inventory import Inventories
from discoverd.models import CertRecord, Cluster, ClusterConfig

TOKEN = "3e86b59982e49066c5d813af1c2e2579"


def record(n: int, name: str, profile: str = "peer", ip: str = "", **changes) -> CertRecord:
    sans = ("localhost", "127.0.0.1", *((ip,) if ip else ()))
    made = CertRecord(serial=f"{n:x}", name=name, profile=profile, sans=sans, not_after=0.0,
                      fingerprint="", issued_at=float(n), spki_sha256=f"key{n}")  # fmt: skip
    return made.model_copy(update=changes)


def scanned(cluster: Cluster) -> tuple[dict, set, dict]:
    """What the index must say, by a plain scan."""
    names: dict[str, set[str]] = {}
    addresses: dict[str, str] = {}
    for c in cluster.certs:
        if c.revoked_at is None:
            names.setdefault(c.profile, set()).add(c.name)
            if c.profile != "client":
                for san in c.sans:
                    addresses.setdefault(san, c.name)
    return names, set(cluster.revoked_keys()), addresses


STEPS = {
    "added one by one": [("add", record(1, "a", ip="10.0.0.1")), ("add", record(2, "b", ip="10.0.0.2")),
                         ("add", record(3, "c", "client"))],
    "an operator revokes": [("add", record(1, "a", ip="10.0.0.1")), ("add", record(2, "b")),
                            ("add", record(1, "a", ip="10.0.0.1", revoked_at=5.0)),
                            ("add", record(3, "a", ip="10.0.0.1"))],
    "a renewal supersedes": [("add", record(1, "a", ip="10.0.0.1")),
                             ("add", record(1, "a", ip="10.0.0.1", revoked_at=5.0, superseded_by="2")),
                             ("add", record(2, "a", ip="10.0.0.1"))],
    "a client holds no address": [("add", record(1, "x", "client", ip="10.0.0.9")),
                                  ("add", record(2, "b", ip="10.0.0.9"))],
    "an out of order record": [("add", record(5, "e")), ("add", record(4, "d", ip="10.0.0.4"))],
    "the view is read again": [("add", record(1, "a")), ("reset", None), ("add", record(2, "b"))],
}  # fmt: skip


@pytest.mark.parametrize("case", list(STEPS))
def test_the_index_answers_as_a_scan(case):
    inventories = Inventories()
    cluster = Cluster(TOKEN, ClusterConfig(size=3, created_at=0.0), created=1, lease=1)
    for step, item in STEPS[case]:
        if step == "add":
            cluster = cluster.with_cert(item)
        else:  # a full read makes new objects of the same records
            copies = tuple(c.model_copy() for c in cluster.certs)
            cluster = Cluster(TOKEN, cluster.config, 1, 1, certs=copies)
        index = inventories.of(cluster)
        assert (index.names, index.revoked_keys, index.addresses) == scanned(cluster), step
    assert inventories.of(cluster) is index  # the same view: nothing read again
