"""The fleet rendering and its query, as pure functions (tables)."""

from __future__ import annotations

import pytest

from discoverd.admin import fleet
from discoverd.certs import pki
from discoverd.errors import Invalid
from discoverd.logs import fingerprint
from discoverd.models import CaRecord, CertRecord, Cluster, ClusterConfig

NOW = 1_800_000_000.0
DAY = 86400.0


def cluster(n: int, name: str | None = None, until: float | None = NOW + DAY, **fields) -> Cluster:
    config = ClusterConfig(size=3, created_at=NOW - DAY, bootstrap_until=until, name=name)
    return Cluster(token=f"{n:032x}", config=config, created=n, lease=0, **fields)


def cert(serial: str, not_after: float, revoked: bool = False) -> CertRecord:
    return CertRecord(
        serial=serial, name=f"m{serial}", profile="peer", sans=(), not_after=not_after,
        fingerprint="00", issued_at=NOW - DAY, revoked_at=NOW if revoked else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, fleet.FleetQuery()),
        ({"name": "Prod"}, fleet.FleetQuery(name="prod")),
        ({"fingerprint": "1A2b"}, fleet.FleetQuery(fingerprint="1a2b")),
        ({"limit": "1000", "offset": "5"}, fleet.FleetQuery(limit=1000, offset=5)),
        ({"limit": "1"}, fleet.FleetQuery(limit=1)),
    ],
)
def test_queries(query, expected):
    assert fleet.parse_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "1e3"},
        {"limit": " 5"},
        {"offset": "-1"},
        {"offset": "99999999999"},
        {"name": "n" * 65},
        {"fingerprint": "123456789"},
        {"fingerprint": "0x12"},
        {"token": "0" * 32},
    ],
)
def test_bad_queries(query):
    with pytest.raises(Invalid):
        fleet.parse_query(query)


def test_a_cluster_without_ca_or_members():
    entry = fleet.summary(cluster(1, "web"), NOW)
    assert entry == {
        "fingerprint": fingerprint(f"{1:032x}"),
        "name": "web",
        "size": 3,
        "registered": 0,
        "bootstrap": {
            "created_at": "2027-01-14T08:00:00+00:00",
            "until": "2027-01-16T08:00:00+00:00",
            "open": True,
        },
        "ca": {"present": False, "expires_at": None},
        "certificates": {"count": 0, "revoked": 0, "expired": 0, "earliest_expiry": None},
    }


@pytest.mark.parametrize(
    ("until", "is_open"), [(NOW + 1, True), (NOW, True), (NOW - 1, False), (None, True)]
)
def test_bootstrap_window(until, is_open):
    assert fleet.summary(cluster(1, until=until), NOW)["bootstrap"]["open"] is is_open


def test_ca_expiry_and_the_earliest_live_certificate():
    _, ca_cert = pki.new_ca("test CA")
    record = CaRecord(certificate=pki.pem(ca_cert), sealed_key="", key_id="")
    certs = (
        cert("01", NOW - DAY),  # expired
        cert("02", NOW + 2 * DAY, revoked=True),  # revoked: not the next expiry
        cert("03", NOW + 5 * DAY),
        cert("04", NOW + 9 * DAY),
    )
    entry = fleet.summary(cluster(1, ca=record, certs=certs), NOW)
    assert entry["ca"] == {
        "present": True,
        "expires_at": ca_cert.not_valid_after_utc.isoformat(),
    }
    assert entry["certificates"] == {
        "count": 4,
        "revoked": 1,
        "expired": 1,
        "earliest_expiry": "2027-01-20T08:00:00+00:00",
    }


def test_an_unreadable_ca_has_no_expiry():
    record = CaRecord(certificate="not a certificate", sealed_key="", key_id="")
    assert fleet.summary(cluster(1, ca=record), NOW)["ca"] == {"present": True, "expires_at": None}


@pytest.mark.parametrize(
    ("query", "shown", "total"),
    [
        (fleet.FleetQuery(), [5, 4, 3, 2, 1], 5),
        (fleet.FleetQuery(limit=2), [5, 4], 5),
        (fleet.FleetQuery(limit=2, offset=4), [1], 5),
        (fleet.FleetQuery(offset=9), [], 5),
        (fleet.FleetQuery(name="db"), [4, 2], 2),
        (fleet.FleetQuery(name="b-"), [4, 2], 2),
        (fleet.FleetQuery(fingerprint=fingerprint(f"{3:032x}")[:4]), [3], 1),
    ],
)
def test_pages(query, shown, total):
    clusters = {
        c.token: c for c in (cluster(n, "db-x" if n % 2 == 0 else None) for n in range(1, 6))
    }
    tokens = [*clusters, "f" * 32]  # a token that vanished since the listing was taken
    result = fleet.page(tokens, clusters.get, query, NOW)
    assert result["total"] == total
    assert [c["fingerprint"] for c in result["clusters"]] == [
        fingerprint(f"{n:032x}") for n in shown
    ]
