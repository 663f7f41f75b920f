"""A response message from a zone `Result`, in wire form, in time linear in its size. No sockets.

Owner names are compressed (RFC 1035 4.1.4) against the question and every name written before
them, found through a dict of name suffixes. Names inside RDATA (SRV and NS targets) are written
out in full: RFC 2782 forbids compressing an SRV target and Go's resolver refuses one; later
owners may still point into them. Writing stops as soon as the message outgrows its limit, so a
reply that does not fit costs no more than the limit. Over the limit, glue (the additional
section) is shed first; if the answers still do not fit, the reply keeps only the question and
sets TC, so that the client retries over TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from discoverd.dns.names import Name
from discoverd.dns.zone import Record, Result

QR, AA, TC = 0x8000, 0x0400, 0x0200
CLASS_IN = 1
OPT = 41
HEADER_SIZE = 12

_HEADER = struct.Struct("!6H")
_POINTER = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")
_OPT_RR = struct.Struct("!BHHIH")  # root owner, type, class = UDP size, TTL = ext rcode etc.
_MAX_POINTER = 0x3FFF


class _Writer:
    def __init__(self, question: bytes, qname: Name) -> None:
        self.buf = bytearray(HEADER_SIZE) + question
        self.names: dict[Name, int] = {}
        self._remember(qname, HEADER_SIZE)

    def records(self, records: Iterable[Record], room: int) -> int | None:
        """Write `records`; their number, or None once the message is longer than `room`."""
        buf = self.buf
        count = 0
        for record in records:
            self._name(record.owner)
            buf += _RR_FIXED.pack(record.rtype, CLASS_IN, record.ttl, len(record.rdata))
            start = len(buf)
            buf += record.rdata
            target = record.target
            if target is not None:
                self._remember(target, start + len(record.rdata) - _wire_length(target))
            if len(buf) > room:
                return None
            count += 1
        return count

    def truncate(self, length: int) -> None:
        del self.buf[length:]
        self.names = {name: at for name, at in self.names.items() if at < length}

    def _name(self, name: Name) -> None:
        buf = self.buf
        for i in range(len(name)):
            suffix = name[i:]
            pointer = self.names.get(suffix)
            if pointer is not None:
                buf += _POINTER.pack(0xC000 | pointer)
                return
            if len(buf) <= _MAX_POINTER:
                self.names[suffix] = len(buf)
            label = name[i]
            buf.append(len(label))
            buf += label
        buf.append(0)

    def _remember(self, name: Name, at: int) -> None:
        for i in range(len(name)):
            if at > _MAX_POINTER:
                return
            self.names.setdefault(name[i:], at)
            at += 1 + len(name[i])


def pack(
    question: bytes,
    qname: Name,
    result: Result,
    limit: int,
    opt: tuple[int, int] | None = None,
) -> bytes:
    """The reply (ID 0, flags QR AA and the rcode; RD, CD and the opcode are the caller's) to
    the query whose question section is `question`, naming `qname` (lowercase, uncompressed).
    `opt`: (advertised UDP size, extended rcode) when the query carried an OPT."""
    opt_rr = _OPT_RR.pack(0, OPT, opt[0], opt[1] << 24, 0) if opt is not None else b""
    room = limit - len(opt_rr)
    writer = _Writer(question, qname)
    answers = writer.records(result.answer, room)
    authority = writer.records(result.authority, room) if answers is not None else None
    if answers is None or authority is None:
        writer = _Writer(question, qname)
        counts, flags = (0, 0, 0), TC
    else:
        mark = len(writer.buf)
        additional = writer.records(result.additional, room)
        if additional is None:  # glue is optional: shed it whole
            writer.truncate(mark)
            additional = 0
        counts, flags = (answers, authority, additional), 0
    flags |= QR | AA | (result.rcode & 0xF)
    extra = 1 if opt is not None else 0
    _HEADER.pack_into(writer.buf, 0, 0, flags, 1, counts[0], counts[1], counts[2] + extra)
    return bytes(writer.buf) + opt_rr


def _wire_length(name: Name) -> int:
    return sum(len(label) + 1 for label in name) + 1
