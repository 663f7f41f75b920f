"""DNS messages in and out: one query's bytes -> one response's bytes (or nothing). No sockets.

The common query is parsed with `struct` (header, one question, at most one OPT), and its
response is spliced from a packed template cached per (name, type, class, size limit, EDNS):
the request's ID, RD and CD bits and question bytes (case preserved, RFC 4343), then the
template. A repeated query (the same bytes after the ID and flags, as resolvers send them) finds
its template without being parsed again. Templates are packed by `pack` and stamped with the
cluster domain they were read from: a change to one cluster drops only that cluster's answers
(and the negative answers, whose SOA serial moves), in O(1), however many clusters there are.

Rules (RFC 1035, 2181, 6891, 9619): QR=1 queries are ignored; a header too short to answer
is dropped; QDCOUNT != 1 or a malformed question is FORMERR; opcodes other than QUERY get
NOTIMP; non-IN classes get REFUSED; an OPT in the query means an OPT in the reply; EDNS
version > 0 gets BADVERS; two OPTs are FORMERR. While the registry view is not in step with
etcd (`ready()` is false: not read yet, or stale), names in the zone get SERVFAIL, never an
authoritative NXDOMAIN that resolvers would cache. UDP replies fit 512 bytes, or the
client's EDNS size capped at 1232: glue is shed first, then answers are dropped and TC is set,
with the question kept so that the client retries over TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import CLASS, QTYPE, RCODE

from discoverd.dns.names import Name
from discoverd.dns.pack import pack
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
_Entry = tuple[int, bytes | None, _Template]  # stamp, the domain it was read from, template

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

    def __init__(self, lookup: Lookup, ready: Callable[[], bool] = lambda: True) -> None:
        self._lookup = lookup
        self._ready = ready
        self._cache: dict[tuple[bytes, int, int, int, bool], _Entry] = {}
        self._raw: dict[tuple[bytes, bool], _Entry] = {}  # query bytes after ID+flags
        self._clock = 1  # the stamp of templates made now
        self._zone_changed = 0  # stamp of the last change: older answers with the SOA are stale
        self._changed: dict[bytes, int] = {}  # domain -> stamp of its last change
        self.rcodes: dict[int, int] = {}
        self.dropped = 0

    def invalidate(self, domains: Iterable[bytes] | None = None) -> None:
        """Forget the answers read from `domains` (None: every answer), and every answer that
        carries the SOA. O(len(domains)): stale templates are found out when next used."""
        if domains is None or len(self._changed) >= CACHE_MAX:
            self._cache, self._raw, self._changed = {}, {}, {}
        self._clock += 1
        self._zone_changed = self._clock
        for domain in domains or ():
            self._changed[domain] = self._clock

    def respond(self, data: bytes, tcp: bool) -> bytes | None:
        data = bytes(data)
        if len(data) < 12:
            self.dropped += 1
            return None
        ident, flags = _TAIL.unpack_from(data)
        if flags & QR:
            self.dropped += 1
            return None
        ready = self._ready()
        # Rare opcodes are answered without the caches; the raw-bytes cache only keeps what a
        # resolver sends (a question and an OPT), never a large crafted packet. Nothing is
        # cached while the view is not ready.
        cacheable = ready and not flags & OPCODE_MASK and len(data) <= RAW_CACHE_BYTES
        raw_key = (data[4:], tcp)
        if cacheable:
            entry = self._raw.get(raw_key)
            if entry is not None and self._fresh(entry):
                return self._splice(ident, flags, entry[2], data)
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
        entry = self._cache.get(key) if cacheable else None
        if entry is None or not self._fresh(entry):
            template, domain = self._template(query, limit, ready)
            entry = (self._clock, domain, template)
        if cacheable:
            if len(self._raw) >= CACHE_MAX:
                self._cache, self._raw = {}, {}
            self._cache[key] = entry
            self._raw[raw_key] = entry
        return self._splice(ident, flags, entry[2], data)

    def truncated(self, data: bytes) -> bytes | None:
        """A TC=1 reply with only the question and no OPT, never larger than the query: what a
        rate-limited client gets instead of its answer (it may retry over TCP). None if the
        query is not one to answer."""
        if len(data) < 12:
            return None
        try:
            query = parse(bytes(data))
        except FormatError:
            return None
        if query.flags & QR:
            return None
        flags = QR | AA | TC | (query.flags & (OPCODE_MASK | RD | CD))
        return _HEADER.pack(query.id, flags, 1, 0, 0, 0) + query.question

    def _fresh(self, entry: _Entry) -> bool:
        stamp, domain, _ = entry
        if domain is None:
            return stamp >= self._zone_changed
        return stamp >= self._changed.get(domain, 0)

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

    def _template(self, query: Query, limit: int, ready: bool) -> tuple[_Template, bytes | None]:
        if query.flags & OPCODE_MASK:
            result, ext = Result(RCODE.NOTIMP), 0
        elif query.edns_version > 0:
            result, ext = Result(0), BADVERS >> 4
        elif query.qclass != CLASS.IN:
            result, ext = Result(RCODE.REFUSED), 0
        else:
            result, ext = self._lookup(query.qname, query.qtype), 0
            if not ready and result.rcode != RCODE.REFUSED:
                result = Result(RCODE.SERVFAIL)
        opt = (UDP_MAX, ext) if query.edns_size is not None else None
        packed = pack(query.question, query.qname, result, limit, opt)
        flags = _HEADER.unpack_from(packed)[1] & ~(RD | CD | OPCODE_MASK)
        qlength = len(query.question)
        return (flags, packed[4:12], qlength, packed[12 + qlength :]), result.domain


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


__all__ = ["QTYPE", "Query", "Responder", "parse"]
