"""The pure zone logic, table-driven: answers, NODATA vs NXDOMAIN, REFUSED, glue, SOA."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE

from discoverd.dns import names
from discoverd.dns.zone import MemberEndpoints, Published, Zone

TOKEN = "ab" * 16
ZONE = "etcd.internal"


@pytest.fixture
def zone() -> Zone:
    z = Zone(ZONE, ns_addresses=["127.0.0.53"])
    members = (
        MemberEndpoints("infra0", ("https://10.0.0.1:2380",), ("https://10.0.0.1:2379",)),
        MemberEndpoints("infra1", ("https://10.0.0.2:2380",), ("http://10.0.0.2:2379",)),
        MemberEndpoints("infra2", ("http://[fd00::3]:2380",)),
        MemberEndpoints("infra3", ("http://node3.example.com:2380",)),
        MemberEndpoints("bad.name", ("http://10.0.0.9:2380",)),  # not a host label: skipped
    )
    z.set_cluster(TOKEN, Published(TOKEN, "prod", members), serial=42)
    return z


def ask(zone: Zone, qname: str, qtype: str):
    return zone.lookup(names.parse(qname), getattr(QTYPE, qtype))


def srv_targets(result) -> list[tuple[int, str]]:
    return sorted((rr.rdata.port, str(rr.rdata.target)) for rr in result.answer)


@pytest.mark.parametrize(
    ("qname", "qtype", "expected"),
    [
        (
            f"_etcd-server-ssl._tcp.{TOKEN}.{ZONE}",
            "SRV",
            [(2380, f"infra0.{TOKEN}.{ZONE}."), (2380, f"infra1.{TOKEN}.{ZONE}.")],
        ),
        (
            f"_etcd-server._tcp.{TOKEN}.{ZONE}",
            "SRV",
            [(2380, f"infra2.{TOKEN}.{ZONE}."), (2380, "node3.example.com.")],
        ),
        (f"_etcd-client-ssl._tcp.{TOKEN}.{ZONE}", "SRV", [(2379, f"infra0.{TOKEN}.{ZONE}.")]),
        (f"_etcd-client._tcp.{TOKEN}.{ZONE}", "SRV", [(2379, f"infra1.{TOKEN}.{ZONE}.")]),
        (
            f"_etcd-server-ssl._tcp.prod.{ZONE}",
            "SRV",
            [(2380, f"infra0.prod.{ZONE}."), (2380, f"infra1.prod.{ZONE}.")],
        ),
        (
            f"_etcd-server-ssl-prod._tcp.prod.{ZONE}",
            "SRV",
            [(2380, f"infra0.prod.{ZONE}."), (2380, f"infra1.prod.{ZONE}.")],
        ),
        (
            f"_etcd-server-ssl-prod._tcp.{TOKEN}.{ZONE}",
            "SRV",
            [(2380, f"infra0.{TOKEN}.{ZONE}."), (2380, f"infra1.{TOKEN}.{ZONE}.")],
        ),
        (
            f"_ETCD-Server-SSL._TCP.{TOKEN.upper()}.Etcd.Internal",
            "SRV",
            [(2380, f"infra0.{TOKEN}.{ZONE}."), (2380, f"infra1.{TOKEN}.{ZONE}.")],
        ),
    ],
)
def test_srv_records(zone, qname, qtype, expected):
    result = ask(zone, qname, qtype)
    assert result.rcode == RCODE.NOERROR
    assert srv_targets(result) == expected
    assert all(rr.ttl == 30 for rr in result.answer)


def test_srv_glue_has_the_addresses_of_our_targets(zone):
    result = ask(zone, f"_etcd-server._tcp.{TOKEN}.{ZONE}", "SRV")
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in result.additional] == [("AAAA", "fd00::3")]


@pytest.mark.parametrize(
    ("qname", "qtype", "rtype", "address"),
    [
        (f"infra0.{TOKEN}.{ZONE}", "A", "A", "10.0.0.1"),
        (f"INFRA0.prod.{ZONE}", "A", "A", "10.0.0.1"),
        (f"infra2.{TOKEN}.{ZONE}", "AAAA", "AAAA", "fd00::3"),
        (f"ns.{ZONE}", "A", "A", "127.0.0.53"),
    ],
)
def test_addresses(zone, qname, qtype, rtype, address):
    result = ask(zone, qname, qtype)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in result.answer] == [(rtype, address)]


@pytest.mark.parametrize(
    ("qname", "qtype"),
    [
        (f"infra0.{TOKEN}.{ZONE}", "AAAA"),  # an IPv4-only host: fast NODATA, not silence
        (f"infra2.{TOKEN}.{ZONE}", "A"),
        (f"_tcp.{TOKEN}.{ZONE}", "SRV"),  # empty non-terminal (RFC 8020)
        (f"{TOKEN}.{ZONE}", "A"),  # the cluster domain exists
        (f"prod.{ZONE}", "SRV"),
        (f"_etcd-server-ssl._tcp.{TOKEN}.{ZONE}", "A"),
        (f"_etcd-server-ssl._tcp.{TOKEN}.{ZONE}", "TXT"),
        (f"infra0.{TOKEN}.{ZONE}", "CAA"),
        (ZONE, "A"),
        (f"ns.{ZONE}", "AAAA"),
    ],
)
def test_nodata_carries_the_soa(zone, qname, qtype):
    result = ask(zone, qname, qtype)
    assert result.rcode == RCODE.NOERROR and not result.answer
    assert [QTYPE[rr.rtype] for rr in result.authority] == ["SOA"]


@pytest.mark.parametrize(
    "qname",
    [
        f"nosuch.{TOKEN}.{ZONE}",
        f"bad.name.{TOKEN}.{ZONE}",
        f"_etcd-server._udp.{TOKEN}.{ZONE}",
        f"{'cd' * 16}.{ZONE}",
        f"other.{ZONE}",
        f"x.infra0.{TOKEN}.{ZONE}",
    ],
)
def test_nxdomain_carries_the_soa(zone, qname):
    result = ask(zone, qname, "SRV")
    assert result.rcode == RCODE.NXDOMAIN
    assert [QTYPE[rr.rtype] for rr in result.authority] == ["SOA"]
    assert result.authority[0].rdata.times[0] == zone.serial


@pytest.mark.parametrize("qname", ["example.com", "internal", "etcd.internal.evil", "com"])
def test_outside_the_zone_is_refused(zone, qname):
    result = ask(zone, qname, "A")
    assert result.rcode == RCODE.REFUSED and not result.answer and not result.authority


def test_apex_soa_and_ns(zone):
    soa = ask(zone, ZONE, "SOA")
    assert [str(rr.rdata.mname) for rr in soa.answer] == ["ns.etcd.internal."]
    ns = ask(zone, ZONE, "NS")
    assert [str(rr.rdata) for rr in ns.answer] == ["ns.etcd.internal."]
    assert [str(rr.rdata) for rr in ns.additional] == ["127.0.0.53"]


def test_any_returns_every_rrset(zone):
    result = ask(zone, ZONE, "ANY")
    assert sorted(QTYPE[rr.rtype] for rr in result.answer) == ["NS", "SOA"]


def test_changes_replace_a_cluster_and_move_the_serial(zone):
    before = zone.serial
    zone.set_cluster(
        TOKEN, Published(TOKEN, None, (MemberEndpoints("m", ("http://10.1.1.1:2380",)),)), 43
    )
    assert zone.serial > before
    assert ask(zone, f"_etcd-server-ssl._tcp.{TOKEN}.{ZONE}", "SRV").answer == ()
    assert ask(zone, f"prod.{ZONE}", "A").rcode == RCODE.NXDOMAIN  # the name went with it
    assert srv_targets(ask(zone, f"_etcd-server._tcp.{TOKEN}.{ZONE}", "SRV")) == [
        (2380, f"m.{TOKEN}.{ZONE}.")
    ]
    zone.set_cluster(TOKEN, None, 44)
    assert ask(zone, f"{TOKEN}.{ZONE}", "A").rcode == RCODE.NXDOMAIN
