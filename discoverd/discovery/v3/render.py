"""Responses of the v3 face, serialized once and shared: the hot paths are a registration fanned
out to thousands of waiting watches, and the size and member Ranges every member repeats.

A protobuf message is the concatenation of its fields, in any order (a parser merges them), so a
response is assembled from parts: the header (one per registry revision), the body (one per
cluster version and scope, memoized on the immutable `Cluster`), and, for a watch, its own
`watch_id` field. Building and serializing the protobuf objects once per watch instead cost
~200 µs each: 2 s of event loop for 10,000 watches.
"""

from __future__ import annotations

from google.protobuf.message import Message

from discoverd.discovery.v3 import protocol
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.pb import mvcc_pb2
from discoverd.models import Cluster

MEMO_LIMIT = 64  # distinct scopes memoized per cluster version (a client chooses them)
_WATCH_ID = 2  # WatchResponse.watch_id: int64, varint


def serialize(response: Message | bytes) -> bytes:
    """The gRPC response serializer: pre-assembled bytes pass through."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def varint_field(number: int, value: int) -> bytes:
    """One varint field (int64 in two's complement, as protobuf writes negative numbers)."""
    if value == 0:
        return b""  # proto3 leaves out a field at its default
    raw = value & 0xFFFFFFFFFFFFFFFF
    out = bytearray([number << 3])
    while raw > 0x7F:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def watch_events(cluster: Cluster, where: protocol.Scope, start: int) -> tuple[int, bytes] | None:
    """The events a watch of `where` from revision `start` gets now: (the newest revision in
    them, the serialized `events` fields), or None when there are none."""
    key = f"v3/events {where.low!r} {where.high!r} {start}"
    found: tuple[int, bytes] | None = cluster.memo.get(key)
    if found is not None or key in cluster.memo:
        return found
    fresh = protocol.since(cluster, where, start)
    if fresh:
        events = [mvcc_pb2.Event(type=mvcc_pb2.Event.PUT, kv=entry.kv()) for entry in fresh]
        found = (fresh[-1].revision, pb.WatchResponse(events=events).SerializeToString())
    _remember(cluster, key, found)
    return found


def range_body(cluster: Cluster | None, where: protocol.Scope) -> bytes:
    """The `kvs` and `count` fields of a plain Range (no revision, limit, sort or filter)."""
    if cluster is None:
        return b""  # no such token: no keys, count 0
    key = f"v3/range {where.low!r} {where.high!r}"
    found: bytes | None = cluster.memo.get(key)
    if found is None:
        entries = protocol.select(cluster, where)
        body = pb.RangeResponse(kvs=[entry.kv() for entry in entries], count=len(entries))
        found = body.SerializeToString()
        _remember(cluster, key, found)
    return found


def _remember(cluster: Cluster, key: str, value: object) -> None:
    scopes: int = cluster.memo.get("v3/scopes", 0)
    if scopes < MEMO_LIMIT:
        cluster.memo[key] = value
        cluster.memo["v3/scopes"] = scopes + 1


class Headers:
    """The serialized header of a Range and of a Watch response, once per revision."""

    def __init__(self, header: pb.ResponseHeader) -> None:
        self.revision = header.revision
        self.range = pb.RangeResponse(header=header).SerializeToString()
        self.watch = pb.WatchResponse(header=header).SerializeToString()

    def watch_response(self, watch_id: int, events: bytes) -> bytes:
        return self.watch + varint_field(_WATCH_ID, watch_id) + events
