"""The pure zone logic, table-driven: answers, NODATA vs NXDOMAIN, REFUSED, glue, SOA."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import pytest
from dnslib import QTYPE, RCODE

from discoverd.dns import names
from discoverd.dns import zone as zone_module
from discoverd.dns.zone import MAX_RECORDS, MAX_URLS, MemberEndpoints, Published, Record, Zone

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


def rdata(record: Record):
    """The record's RDATA as dnspython reads it."""
    return dns.rdata.from_wire(dns.rdataclass.IN, record.rtype, record.rdata, 0, len(record.rdata))


def srv_targets(result) -> list[tuple[int, str]]:
    return sorted((rdata(rr).port, rdata(rr).target.to_text()) for rr in result.answer)


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
    assert [(QTYPE[rr.rtype], rdata(rr).to_text()) for rr in result.additional] == [
        ("AAAA", "fd00::3")
    ]


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
    assert [(QTYPE[rr.rtype], rdata(rr).to_text()) for rr in result.answer] == [(rtype, address)]


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
    assert rdata(result.authority[0]).serial == zone.serial


@pytest.mark.parametrize("qname", ["example.com", "internal", "etcd.internal.evil", "com"])
def test_outside_the_zone_is_refused(zone, qname):
    result = ask(zone, qname, "A")
    assert result.rcode == RCODE.REFUSED and not result.answer and not result.authority


def test_apex_soa_and_ns(zone):
    soa = ask(zone, ZONE, "SOA")
    assert [rdata(rr).mname.to_text() for rr in soa.answer] == ["ns.etcd.internal."]
    ns = ask(zone, ZONE, "NS")
    assert [rdata(rr).to_text() for rr in ns.answer] == ["ns.etcd.internal."]
    assert [rdata(rr).to_text() for rr in ns.additional] == ["127.0.0.53"]


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


# -- cost: a change costs O(the changed cluster's records), bounded, and nothing else --------


def busy_member(i: int) -> MemberEndpoints:
    """A member with the most URLs the member API takes: 16 peer (distinct ports) and 16
    client URLs (distinct host names), the repro of a size-99 cluster that froze the loop."""
    peers = tuple(f"https://10.{i // 250}.{i % 250}.{j + 1}:{2380 + j}" for j in range(16))
    clients = tuple(f"https://c{j}.m{i}.example.com:2379" for j in range(16))
    return MemberEndpoints(f"m{i:03d}", peers, clients)


def fill(zone: Zone, token: str, name: str | None, count: int) -> list[int]:
    """Register `count` busy members one at a time; the operations each change cost."""
    members: list[MemberEndpoints] = []
    costs = []
    for i in range(count):
        members.append(busy_member(i))
        before = zone.operations
        zone.set_cluster(token, Published(token, name, tuple(members)), i + 2)
        costs.append(zone.operations - before)
    return costs


@pytest.mark.parametrize("name", [None, "prod"])
def test_a_change_costs_the_records_of_its_cluster_only(name, monkeypatch):
    parsed = []
    endpoint = zone_module._endpoint
    monkeypatch.setattr(zone_module, "_endpoint", lambda url: parsed.append(url) or endpoint(url))
    zone = Zone(ZONE)
    costs = []
    members: list[MemberEndpoints] = []
    for i in range(198):  # a size-99 cluster's registration cap
        members.append(busy_member(i))
        parsed.clear()
        before = zone.operations
        zone.set_cluster(TOKEN, Published(TOKEN, name, tuple(members)), i + 2)
        costs.append(zone.operations - before)
        # only the new member's URLs are parsed, at most MAX_URLS of each kind
        assert len(parsed) <= 2 * MAX_URLS
        domain = zone.domain(TOKEN)
        assert domain is not None and domain.records <= MAX_RECORDS
        assert costs[-1] <= domain.records + 2 * MAX_URLS
    assert max(costs) <= MAX_RECORDS + 2 * MAX_URLS  # bounded, however many members
    assert zone.domain(TOKEN).omitted > 0  # the cap was reached: the rest is left out


def test_a_change_costs_the_same_in_a_full_zone():
    empty = Zone(ZONE)
    alone = fill(empty, "cd" * 16, None, 3)
    full = Zone(ZONE)
    for t in range(20):
        fill(full, f"{t:032x}", "big" if t == 0 else None, 60)
    assert fill(full, "cd" * 16, None, 3) == alone


def test_published_urls_and_records_are_capped():
    zone = Zone(ZONE)
    fill(zone, TOKEN, "prod", 198)
    server = ask(zone, f"_etcd-server-ssl._tcp.{TOKEN}.{ZONE}", "SRV")
    client = ask(zone, f"_etcd-client-ssl-prod._tcp.prod.{ZONE}", "SRV")
    address = ask(zone, f"m000.{TOKEN}.{ZONE}", "A")
    members = {rdata(rr).target.labels[0] for rr in server.answer}
    assert len(server.answer) == MAX_URLS * len(members)  # 4 of the 16 peer URLs each
    assert len(client.answer) == MAX_URLS * len(members)
    assert len(address.answer) == MAX_URLS
    assert 3 * MAX_URLS * len(members) <= MAX_RECORDS


def test_a_host_dns_cannot_carry_is_left_out_not_the_cluster():
    zone = Zone(ZONE)
    members = (
        MemberEndpoints("a", ("http://10.0.0.1:2380", "http://bad..host:2380")),
        MemberEndpoints("b", ("http://h\u00e9.example.com:2380", f"http://{'x' * 64}.com:2380")),
        MemberEndpoints("c", ("http://10.0.0.3:2380",)),
    )
    zone.set_cluster(TOKEN, Published(TOKEN, None, members), 2)
    assert srv_targets(ask(zone, f"_etcd-server._tcp.{TOKEN}.{ZONE}", "SRV")) == [
        (2380, f"a.{TOKEN}.{ZONE}."),
        (2380, f"c.{TOKEN}.{ZONE}."),
    ]


def test_an_unchanged_cluster_is_not_rebuilt():
    zone = Zone(ZONE)
    published = Published(TOKEN, None, (busy_member(1),))
    assert zone.set_cluster(TOKEN, published, 2) == {TOKEN.encode()}
    before, serial = zone.operations, zone.serial
    assert zone.set_cluster(TOKEN, published, 3) == frozenset()
    assert (zone.operations, zone.serial) == (before, serial)
