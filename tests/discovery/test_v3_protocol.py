"""The pure v3 protocol functions, table-driven: scoping, registration keys, selections."""

from __future__ import annotations

import pytest

from discoverd.discovery.v3 import protocol
from discoverd.errors import Forbidden, Invalid, TooLarge
from discoverd.models import Cluster, ClusterConfig, Member

T = "3e86b59982e49066c5d813af1c2e2579"
U = "3e86b59982e49066c5d813af1c2e257a"  # the next token up: etcdctl's prefix end covers it
P = f"/_etcd/registry/{T}/".encode()


def cluster(*members: tuple[str, int]) -> Cluster:
    c = Cluster(T, ClusterConfig(size=3, created_at=0), created=5, lease=1)
    for member_id, revision in members:
        c = c.with_member(Member(member_id, f"m{revision}=http://10.0.0.{revision}:2380", revision))
    return c


@pytest.mark.parametrize(
    ("key", "range_end", "low", "high"),
    [
        # the member's own requests
        (P + b"_config/size", b"", P + b"_config/size", P + b"_config/size\x00"),
        (P + b"members", P + b"membert", P + b"members", P + b"membert"),
        # etcdctl get --prefix /_etcd/registry/T: clipped to T's keys (not U's)
        (P[:-1], f"/_etcd/registry/{T[:-1]}a".encode(), P, P[:-1] + b"0"),
        # range_end "\0": everything from key on, clipped
        (P, b"\x00", P, P[:-1] + b"0"),
        # a range reaching past the token is clipped
        (P + b"members/", b"\xff", P + b"members/", P[:-1] + b"0"),
    ],
)
def test_scope_clips_to_one_token(key, range_end, low, high):
    where = protocol.scope(key, range_end)
    assert (where.token, where.low, where.high) == (T, low, high)
    assert not where.covers(f"/_etcd/registry/{U}/_config/size".encode())


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"/",
        b"/_etcd/registry/",
        b"/_etcd/registry",
        b"/_etcd/registry/3e86",
        f"/_etcd/registry/{T.upper()}/_config/size".encode(),
        f"/_etcd/registry/{T}0/_config/size".encode(),  # not token T
        b"/discoverd/v1/clusters/",
        f"/other/{T}/".encode(),
    ],
)
def test_scope_refuses_anything_but_one_token(key):
    with pytest.raises(Forbidden):
        protocol.scope(key, b"\x00")


def test_scope_bounds_key_sizes():
    with pytest.raises(TooLarge):
        protocol.scope(P + b"x" * 300, b"")


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (P + b"_config/size", Forbidden),
        (P + b"_config", Forbidden),
        (P + b"members", Forbidden),
        (P + b"members/", Forbidden),
        (P + b"members/XYZ", Invalid),
        (P + b"members/12345678901234567", Invalid),  # 17 hex digits: not a uint64 ID
        (P + b"members/0", Invalid),
        (P + b"other/1", Forbidden),
        (b"/_etcd/registry/x/members/1", Forbidden),
        (P + b"members/" + b"a" * 300, TooLarge),
    ],
)
def test_registration_target_refusals(key, error):
    with pytest.raises(error):
        protocol.registration_target(key)


def test_registration_target():
    assert protocol.registration_target(P + b"members/8e9e05c52164694d") == (T, "8e9e05c52164694d")


@pytest.mark.parametrize("value", [b"\xff\xfe", "infra0=http://h\u00e9:2380".encode()])
def test_registration_value_must_be_ascii(value):
    with pytest.raises(Invalid):
        protocol.registration_value(value)


def test_select_by_key_and_as_of_a_revision():
    c = cluster(("b", 9), ("a", 7), ("c", 8))
    everything = protocol.scope(P, b"\x00")
    keys = [e.key for e in protocol.select(c, everything)]
    assert keys == [P + b"_config/size", P + b"members/a", P + b"members/b", P + b"members/c"]
    assert [e.key for e in protocol.select(c, everything, at_revision=7)] == keys[:2]
    members = protocol.scope(P + b"members", P + b"membert")
    assert [e.revision for e in protocol.select(c, members)] == [7, 9, 8]
    one = protocol.scope(P + b"members/c", b"")
    assert [e.value for e in protocol.select(c, one)] == [b"m8=http://10.0.0.8:2380"]


def test_since_replays_in_revision_order():
    c = cluster(("b", 9), ("a", 7), ("c", 8))
    members = protocol.scope(P + b"members", P + b"membert")
    assert [e.revision for e in protocol.since(c, members, 8)] == [8, 9]
    assert protocol.since(c, members, 10) == []
    everything = protocol.scope(P, b"\x00")
    assert [e.revision for e in protocol.since(c, everything, 1)] == [5, 7, 8, 9]


def test_entries_render_as_etcd_key_values():
    kv = protocol.entries(cluster(("a", 7)))[1].kv()
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (7, 7, 1, 0)
    assert protocol.entries(cluster())[0].kv(keys_only=True).value == b""
