"""DNS messages in and out: one query's bytes -> one response's bytes (or nothing). No sockets.

The common query is parsed with `struct` (header, one question, at most one OPT), and its
response is spliced from a packed template cached per (name, type, class, size limit, EDNS):
the request's ID, RD and CD bits and question bytes (case preserved, RFC 4343), then the
template. A repeated query (the same bytes after the ID and flags, as resolvers send them) finds
its template without being parsed again. Templates are built with dnslib and dropped whenever
the zone changes.

Rules (RFC 1035, 2181, 6891, 9619): QR=1 queries are ignored; a header too short to answer
is dropped; QDCOUNT != 1 or a malformed question is FORMERR; opcodes other than QUERY get
NOTIMP; non-IN classes get REFUSED; an OPT in the query means an OPT in the reply; EDNS
version > 0 gets BADVERS; two OPTs are FORMERR. UDP replies fit 512 bytes, or the client's
EDNS size capped at 1232: glue is shed first, then answers are dropped and TC is set, with
the question kept so that the client retries over TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from discoverd.dns.names import Name
from discoverd.dns.zone import Result

QR, AA, TC, RD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
OPCODE_MASK = 0x7800
OPT = 41
UDP_PLAIN = 512
UDP_MAX = 1232  # what we advertise and never exceed over UDP (DNS flag day 2020)
TCP_MAX = 65535
BADVERS = 16
CACHE_MAX = 20_000
RAW_CACHE_BYTES = 300  # a question (<= 255-byte name) and an OPT fit; 20,000 x 300 B = 6 MB

_Template = tuple[int, bytes, int, bytes]  # flags, counts, question length, the rest

_HEADER = struct.Struct("!6H")
_TAIL = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")


class FormatError(Exception):
    """The header parsed, the rest did not."""


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    question: bytes  # the question section exactly as received
    qname: Name  # lowercase labels
    qtype: int
    qclass: int
    edns_size: int | None  # None: no OPT in the query
    edns_version: int


Lookup = Callable[[Name, int], Result]


class Responder:
    """Turns query bytes into response bytes, from a zone lookup and a template cache."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._cache: dict[tuple[bytes, int, int, int, bool], _Template] = {}
        self._raw: dict[tuple[bytes, bool], _Template] = {}  # query bytes after ID+flags
        self.rcodes: dict[int, int] = {}
        self.dropped = 0

    def invalidate(self) -> None:
        self._cache = {}
        self._raw = {}

    def respond(self, data: bytes, tcp: bool) -> bytes | None:
        data = bytes(data)
        if len(data) < 12:
            self.dropped += 1
            return None
        ident, flags = _TAIL.unpack_from(data)
        if flags & QR:
            self.dropped += 1
            return None
        # Rare opcodes are answered without the caches; the raw-bytes cache only keeps what a
        # resolver sends (a question and an OPT), never a large crafted packet.
        cacheable = not flags & OPCODE_MASK and len(data) <= RAW_CACHE_BYTES
        raw_key = (data[4:], tcp)
        if cacheable:
            template = self._raw.get(raw_key)
            if template is not None:
                return self._splice(ident, flags, template, data)
        try:
            query = parse(data)
        except FormatError:
            return self._bare(ident, flags, RCODE.FORMERR)
        cacheable = cacheable and not query.edns_version
        limit = TCP_MAX if tcp else _udp_limit(query.edns_size)
        key = (
            query.question[:-4].lower(),
            query.qtype,
            query.qclass,
            limit,
            query.edns_size is not None,
        )
        cached = self._cache.get(key) if cacheable else None
        template = cached or self._template(query, limit)
        if cacheable:
            if len(self._raw) >= CACHE_MAX:
                self.invalidate()
            self._cache[key] = template
            self._raw[raw_key] = template
        return self._splice(ident, flags, template, data)

    def _splice(self, ident: int, flags: int, template: _Template, data: bytes) -> bytes:
        base_flags, counts, qlength, body = template
        rcode = base_flags & 0xF
        self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1
        out_flags = base_flags | (flags & (RD | CD | OPCODE_MASK))
        return _TAIL.pack(ident, out_flags) + counts + data[12 : 12 + qlength] + body

    def _bare(self, ident: int, flags: int, rcode: int) -> bytes:
        self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1
        out_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | rcode
        return _HEADER.pack(ident, out_flags, 0, 0, 0, 0)

    def _template(self, query: Query, limit: int) -> _Template:
        if query.flags & OPCODE_MASK:
            result, ext = Result(RCODE.NOTIMP), 0
        elif query.edns_version > 0:
            result, ext = Result(0), BADVERS >> 4
        elif query.qclass != CLASS.IN:
            result, ext = Result(RCODE.REFUSED), 0
        else:
            result, ext = self._lookup(query.qname, query.qtype), 0
        packed = _pack(query, result, ext, limit)
        flags = _HEADER.unpack_from(packed)[1] & ~(RD | CD | OPCODE_MASK)
        qlength = len(query.question)
        return flags, packed[4:12], qlength, packed[12 + qlength :]


def parse(data: bytes) -> Query:
    """A query with one question and at most one OPT; FormatError for anything else."""
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1 or ancount or nscount:
        raise FormatError
    labels: list[bytes] = []
    pos, total = 12, 0
    while True:
        if pos >= len(data):
            raise FormatError
        length = data[pos]
        if length & 0xC0:  # a pointer cannot be in the first name of a message
            raise FormatError
        pos += 1
        if length == 0:
            break
        total += length + 1
        if total > 254 or pos + length > len(data):
            raise FormatError
        labels.append(data[pos : pos + length].lower())
        pos += length
    if pos + 4 > len(data):
        raise FormatError
    qtype, qclass = _TAIL.unpack_from(data, pos)
    question = data[12 : pos + 4]
    pos += 4
    edns_size: int | None = None
    edns_version = 0
    for _ in range(arcount):
        pos, rtype, rclass, ttl = _skip_rr(data, pos)
        if rtype == OPT:
            if edns_size is not None:
                raise FormatError  # two OPT records
            edns_size, edns_version = rclass, (ttl >> 16) & 0xFF
    return Query(ident, flags, question, tuple(labels), qtype, qclass, edns_size, edns_version)


def _skip_rr(data: bytes, pos: int) -> tuple[int, int, int, int]:
    while True:  # the owner name (OPT's is the root, but skip any name)
        if pos >= len(data):
            raise FormatError
        length = data[pos]
        if length & 0xC0 == 0xC0:
            pos += 2
            break
        if length & 0xC0:
            raise FormatError
        pos += 1 + length
        if length == 0:
            break
    if pos + _RR_FIXED.size > len(data):
        raise FormatError
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += _RR_FIXED.size + rdlength
    if pos > len(data):
        raise FormatError
    return pos, rtype, rclass, ttl


def _udp_limit(edns_size: int | None) -> int:
    if edns_size is None:
        return UDP_PLAIN
    return max(UDP_PLAIN, min(edns_size, UDP_MAX))


def _pack(query: Query, result: Result, ext_rcode: int, limit: int) -> bytes:
    def build(
        answer: tuple[RR, ...], authority: tuple[RR, ...], additional: tuple[RR, ...], tc: bool
    ) -> bytes:
        header = DNSHeader(id=0, qr=1, aa=1, ra=0, tc=int(tc), rcode=result.rcode & 0xF)
        question = DNSQuestion(DNSLabel(query.qname), query.qtype, query.qclass)
        message = DNSRecord(header, questions=[question], rr=list(answer), auth=list(authority))
        for rr in additional:
            message.add_ar(rr)
        if query.edns_size is not None:
            message.add_ar(EDNS0(udp_len=UDP_MAX, ext_rcode=ext_rcode))
        return bytes(message.pack())

    packed = build(result.answer, result.authority, result.additional, tc=False)
    if len(packed) > limit and result.additional:
        packed = build(result.answer, result.authority, (), tc=False)  # glue is optional
    if len(packed) > limit:
        packed = build((), (), (), tc=True)
    return packed


__all__ = ["QTYPE", "Query", "Responder", "parse"]
