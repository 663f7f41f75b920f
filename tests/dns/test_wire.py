"""DNS messages: header rules, EDNS, truncation, malformed input. Parsed back with dnspython."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from discoverd.dns.wire import Responder
from discoverd.dns.zone import MemberEndpoints, Published, Zone

TOKEN = "ab" * 16
SRV_NAME = f"_etcd-server._tcp.{TOKEN}.etcd.internal"


def responder(members: int = 3) -> Responder:
    zone = Zone("etcd.internal", ["127.0.0.1"])
    endpoints = tuple(
        MemberEndpoints(f"member-{i:02d}", (f"http://10.0.{i // 250}.{i % 250 + 1}:2380",))
        for i in range(members)
    )
    zone.set_cluster(TOKEN, Published(TOKEN, None, endpoints), 5)
    return Responder(zone.lookup)


def ask(r: Responder, query: dns.message.Message, tcp: bool = False) -> dns.message.Message:
    raw = r.respond(query.to_wire(), tcp=tcp)
    assert raw is not None
    return dns.message.from_wire(raw)


def test_header_rules():
    query = dns.message.make_query(SRV_NAME.upper(), "SRV")
    query.flags |= dns.flags.RD | dns.flags.CD | dns.flags.AD
    reply = ask(responder(), query)
    assert reply.id == query.id
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD and reply.flags & dns.flags.CD
    assert not reply.flags & dns.flags.RA and not reply.flags & dns.flags.AD
    assert reply.question[0].name.to_text() == SRV_NAME.upper() + "."  # case echoed
    assert len(reply.answer[0]) == 3 and len(reply.additional) == 3


def test_cached_answers_get_each_querys_id_and_case():
    r = responder()
    for case in (str.lower, str.upper, str.title):
        query = dns.message.make_query(case(SRV_NAME), "SRV")
        reply = ask(r, query)
        assert reply.id == query.id
        assert reply.question[0].name.to_text() == case(SRV_NAME) + "."
        assert len(reply.answer[0]) == 3


@pytest.mark.parametrize(
    ("payload", "ednsflag", "version", "rcode", "opt_size"),
    [
        (None, None, 0, dns.rcode.NOERROR, None),
        (4096, 0, 0, dns.rcode.NOERROR, 1232),
        (1232, 0, 1, dns.rcode.BADVERS, 1232),
    ],
)
def test_edns(payload, ednsflag, version, rcode, opt_size):
    if payload is None:
        query = dns.message.make_query(SRV_NAME, "SRV")
    else:
        query = dns.message.make_query(SRV_NAME, "SRV", use_edns=version, payload=payload)
    reply = ask(responder(), query)
    assert reply.rcode() == rcode
    if opt_size is None:
        assert reply.edns == -1
    else:
        assert reply.edns == 0 and reply.payload == opt_size


def test_two_opt_records_are_formerr():
    query = dns.message.make_query(SRV_NAME, "SRV", use_edns=0)
    wire = bytearray(query.to_wire())
    opt = wire[-11:]
    wire += opt
    struct.pack_into("!H", wire, 10, 2)
    raw = responder().respond(bytes(wire), tcp=False)
    assert dns.message.from_wire(raw, question_only=True).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(qdcount):
    wire = bytearray(dns.message.make_query(SRV_NAME, "SRV").to_wire())
    struct.pack_into("!H", wire, 4, qdcount)
    reply = dns.message.from_wire(responder().respond(bytes(wire), tcp=False), question_only=True)
    assert reply.rcode() == dns.rcode.FORMERR


def test_other_opcodes_are_notimp():
    query = dns.message.make_query(SRV_NAME, "SRV")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = ask(responder(), query)
    assert reply.rcode() == dns.rcode.NOTIMP and reply.opcode() == dns.opcode.NOTIFY


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY"])
def test_other_classes_are_refused(rdclass):
    reply = ask(responder(), dns.message.make_query("version.bind", "TXT", rdclass=rdclass))
    assert reply.rcode() == dns.rcode.REFUSED


def test_responses_are_never_answered():
    wire = bytearray(dns.message.make_query(SRV_NAME, "SRV").to_wire())
    wire[2] |= 0x80
    assert responder().respond(bytes(wire), tcp=False) is None


@pytest.mark.parametrize(
    ("members", "use_edns", "tcp", "answers", "glue", "tc"),
    [
        (3, False, False, 3, 3, False),
        (5, False, False, 5, 0, False),  # glue is shed first, without TC
        (7, False, False, 0, 0, True),  # answers do not fit in 512: TC, question kept
        (14, True, False, 14, 0, False),  # EDNS (capped at 1232) fits them
        (20, True, False, 0, 0, True),
        (60, False, True, 60, 60, False),  # TCP carries everything
    ],
)
def test_truncation(members, use_edns, tcp, answers, glue, tc):
    if use_edns:
        query = dns.message.make_query(SRV_NAME, "SRV", use_edns=0, payload=4096)
    else:
        query = dns.message.make_query(SRV_NAME, "SRV")
    raw = responder(members).respond(query.to_wire(), tcp=tcp)
    reply = dns.message.from_wire(raw)
    assert len(raw) <= (65535 if tcp else 1232 if use_edns else 512)
    assert sum(len(rrset) for rrset in reply.answer) == answers
    assert sum(len(rrset) for rrset in reply.additional) == glue
    assert bool(reply.flags & dns.flags.TC) == tc
    assert reply.question[0].name.to_text() == SRV_NAME + "."


def test_srv_targets_are_never_compressed():
    raw = responder().respond(dns.message.make_query(SRV_NAME, "SRV").to_wire(), tcp=False)
    target = b"\x09member-00" + b"\x20" + TOKEN.encode()
    assert target in raw  # written out in full, so Go's resolver accepts it


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12\x34",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",  # question missing
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03abc",  # name runs off the end
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00\x29",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 * 5,
    ],
)
def test_malformed_packets_get_formerr_or_nothing(wire):
    raw = responder().respond(wire, tcp=False)
    if raw is not None:
        assert raw[:2] == wire[:2] and raw[3] & 0x0F == dns.rcode.FORMERR


def test_random_garbage_never_raises():
    r = responder()
    rng = random.Random(1234)
    valid = dns.message.make_query(SRV_NAME, "SRV", use_edns=0).to_wire()
    for _ in range(20_000):
        wire = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        if rng.random() < 0.2:
            del wire[rng.randrange(len(wire) + 1) :]
        r.respond(bytes(wire), tcp=rng.random() < 0.5)
    for _ in range(2_000):
        r.respond(rng.randbytes(rng.randrange(64)), tcp=False)


def test_large_crafted_packets_are_not_kept_in_the_raw_cache():
    r = responder()
    query = dns.message.make_query(SRV_NAME, "SRV")
    wire = bytearray(query.to_wire())
    struct.pack_into("!H", wire, 10, 1)
    padding_rr = b"\x00" + struct.pack("!HHIH", 16, 1, 0, 4000) + b"x" * 4000  # a 4 KB TXT
    for i in range(50):
        r.respond(bytes(wire) + padding_rr[:-2] + bytes([i, i]), tcp=True)
    assert len(r._raw) == 0
    assert sum(len(key[0]) for key in r._cache) < 5000


class CountingZone:
    """A zone whose lookups are counted: a cache hit makes none."""

    def __init__(self) -> None:
        self.zone = Zone("etcd.internal", ["127.0.0.1"])
        self.lookups = 0

    def lookup(self, qname, qtype):
        self.lookups += 1
        return self.zone.lookup(qname, qtype)

    def publish(self, token: str, count: int, serial: int) -> frozenset[bytes]:
        endpoints = tuple(
            MemberEndpoints(f"m{i}", (f"http://10.0.0.{i + 1}:2380",)) for i in range(count)
        )
        return self.zone.set_cluster(token, Published(token, None, endpoints), serial)


def test_a_change_drops_only_its_clusters_answers():
    counting = CountingZone()
    other = "cd" * 16
    counting.publish(TOKEN, 3, 2)
    counting.publish(other, 1, 3)
    r = Responder(counting.lookup)
    mine = dns.message.make_query(SRV_NAME, "SRV")
    theirs = dns.message.make_query(f"_etcd-server._tcp.{other}.etcd.internal", "SRV")
    missing = dns.message.make_query(f"nosuch.{TOKEN}.etcd.internal", "A")
    for query in (mine, theirs, missing):
        ask(r, query)
    assert counting.lookups == 3
    r.invalidate(counting.publish(other, 2, 4))
    assert len(ask(r, mine).answer[0]) == 3
    assert counting.lookups == 3  # untouched cluster: still cached
    assert len(ask(r, theirs).answer[0]) == 2  # the changed one is read again
    negative = ask(r, missing)  # negative answers carry the SOA, whose serial moved
    assert counting.lookups == 5
    assert negative.authority[0][0].serial == counting.zone.serial


def test_not_ready_is_servfail_and_never_cached():
    zone = Zone("etcd.internal")
    ready = False
    r = Responder(zone.lookup, ready=lambda: ready)
    for name in (SRV_NAME, "etcd.internal", f"nosuch.{TOKEN}.etcd.internal"):
        reply = ask(r, dns.message.make_query(name, "SRV"))
        assert reply.rcode() == dns.rcode.SERVFAIL and not reply.flags & dns.flags.TC
    assert ask(r, dns.message.make_query("example.com", "A")).rcode() == dns.rcode.REFUSED
    zone.set_cluster(
        TOKEN, Published(TOKEN, None, (MemberEndpoints("m", ("http://10.0.0.1:1",)),)), 2
    )
    ready = True  # the view caught up; nothing from before is served
    assert ask(r, dns.message.make_query(SRV_NAME, "SRV")).rcode() == dns.rcode.NOERROR
    assert (
        ask(r, dns.message.make_query(f"nosuch.{TOKEN}.etcd.internal", "A")).rcode()
        == dns.rcode.NXDOMAIN
    )


@pytest.mark.parametrize("use_edns", [False, True])
def test_truncated_reply_is_no_larger_than_the_query(use_edns):
    query = dns.message.make_query(SRV_NAME.upper(), "SRV", use_edns=0 if use_edns else None)
    query.flags |= dns.flags.RD
    wire = query.to_wire()
    raw = responder(60).truncated(wire)
    assert raw is not None and len(raw) <= len(wire)
    reply = dns.message.from_wire(raw)
    assert reply.id == query.id and reply.flags & dns.flags.TC and reply.flags & dns.flags.RD
    assert reply.question[0].name.to_text() == SRV_NAME.upper() + "."
    assert not reply.answer and not reply.additional


@pytest.mark.parametrize(
    "wire", [b"", b"\x00" * 11, b"\x12\x34\x81\x00" + b"\x00" * 8, b"\xff" * 40]
)
def test_truncated_reply_to_garbage_is_nothing(wire):
    assert responder().truncated(wire) is None
