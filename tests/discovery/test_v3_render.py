"""Pre-assembled v3 responses decode exactly as the protobuf objects they stand for."""

from __future__ import annotations

import pytest

from discoverd.discovery.v3 import protocol, render
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.models import Cluster, ClusterConfig, Member

T = "3e86b59982e49066c5d813af1c2e2579"
P = f"/_etcd/registry/{T}/".encode()


def cluster() -> Cluster:
    c = Cluster(T, ClusterConfig(size=3, created_at=0), created=5, lease=1)
    for member_id, revision in (("a", 7), ("b", 9)):
        value = f"m{revision}=http://10.0.0.{revision}:2380"
        c = c.with_member(Member(member_id, value, revision, protocol="v3"))
    return c


@pytest.mark.parametrize("watch_id", [0, 1, 127, 128, 300, 2**40, 2**63 - 1, -1])
def test_a_watch_response_from_parts(watch_id):
    header = pb.ResponseHeader(cluster_id=1, member_id=2, revision=9, raft_term=1)
    members = protocol.scope(P + b"members", P + b"membert")
    newest, events = render.watch_events(cluster(), members, 8)
    assembled = pb.WatchResponse.FromString(render.Headers(header).watch_response(watch_id, events))
    assert newest == 9
    assert assembled.header == header and assembled.watch_id == watch_id
    assert [e.kv.key for e in assembled.events] == [P + b"members/b"]
    assert assembled.events[0].kv.create_revision == 9 and assembled.events[0].kv.version == 1
    assert render.watch_events(cluster(), members, 10) is None


def test_a_plain_range_from_parts():
    header = pb.ResponseHeader(cluster_id=1, member_id=2, revision=9, raft_term=1)
    c = cluster()
    everything = protocol.scope(P, b"\x00")
    wire = render.Headers(header).range + render.range_body(c, everything)
    decoded = pb.RangeResponse.FromString(wire)
    assert decoded.header == header and decoded.count == 3 and not decoded.more
    assert [kv.key for kv in decoded.kvs] == [
        P + b"_config/size",
        P + b"members/a",
        P + b"members/b",
    ]
    assert render.range_body(c, everything) is render.range_body(c, everything)  # memoized
    assert pb.RangeResponse.FromString(render.Headers(header).range).count == 0  # no token


def test_client_chosen_scopes_are_memoized_only_so_far():
    c = cluster()
    for start in range(render.MEMO_LIMIT + 50):
        render.watch_events(c, protocol.scope(P, b"\x00"), start)
    assert sum(key.startswith("v3/events") for key in c.memo) == render.MEMO_LIMIT
