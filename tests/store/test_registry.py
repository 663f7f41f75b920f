"""The in-memory view: full loads, watch events, and the waiters it wakes."""

from __future__ import annotations

import asyncio

import pytest

from discoverd.models import ClusterConfig
from discoverd.store import keys
from discoverd.store.gateway import KeyValue
from discoverd.store.registry import Event, Registry, member_from

TOKEN = "3e86b59982e49066c5d813af1c2e2579"
OTHER = "0" * 32


def config_kv(token: str, revision: int, size: int = 3, lease: int = 7) -> KeyValue:
    value = ClusterConfig(size=size, created_at=0).model_dump_json().encode()
    return KeyValue(keys.cluster_config(token), value, revision, revision, lease)


def member_kv(token: str, member_id: str, revision: int, name: str = "m") -> KeyValue:
    value = f"{name}=http://10.0.0.1:2380".encode()
    return KeyValue(keys.v2_member(token, member_id), value, revision, revision, 7)


def put(kv: KeyValue) -> Event:
    return Event(deleted=False, kv=kv)


def test_reset_builds_clusters_with_members_in_creation_order():
    registry = Registry()
    registry.reset(
        [
            config_kv(TOKEN, 2),
            member_kv(TOKEN, "b", 9),
            member_kv(TOKEN, "a", 5),
            member_kv(OTHER, "c", 6),  # a member of an unknown token is dropped
            KeyValue("/foreign/key", b"x", 3, 3, 0),
        ],
        revision=10,
    )
    cluster = registry.cluster(TOKEN)
    assert cluster is not None and cluster.config.size == 3 and cluster.lease == 7
    assert [m.member_id for m in cluster.members] == ["a", "b"]
    assert registry.cluster(OTHER) is None
    assert registry.revision == 10 and registry.synced


def test_apply_replaces_the_cluster_object_whole():
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2)], revision=2)
    before = registry.cluster(TOKEN)
    registry.apply([put(member_kv(TOKEN, "a", 3))], revision=3)
    after = registry.cluster(TOKEN)
    assert before is not after
    assert before is not None and before.members == ()  # readers holding the old view keep it
    assert after is not None and [m.created for m in after.members] == [3]


def test_token_expiry_removes_the_cluster():
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2), member_kv(TOKEN, "a", 3)], revision=3)
    registry.apply(
        [
            Event(True, KeyValue(keys.cluster_config(TOKEN), b"", 0, 4, 0)),
            Event(True, KeyValue(keys.v2_member(TOKEN, "a"), b"", 0, 4, 0)),
        ],
        revision=4,
    )
    assert registry.cluster(TOKEN) is None and len(registry) == 0


def test_unreadable_config_is_skipped_not_fatal():
    registry = Registry()
    registry.reset([KeyValue(keys.cluster_config(TOKEN), b"{not json", 2, 2, 0)], revision=2)
    assert registry.cluster(TOKEN) is None and registry.synced


@pytest.mark.parametrize(
    ("member_id", "min_index", "expected"),
    [
        (None, 0, "a"),
        (None, 4, "b"),
        (None, 5, "b"),
        ("b", 0, "b"),
        ("a", 4, None),
        (None, 6, None),
    ],
)
async def test_wait_member_answers_from_history(member_id, min_index, expected):
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2), member_kv(TOKEN, "a", 3), member_kv(TOKEN, "b", 5)], 5)
    future = registry.wait_member(TOKEN, member_id, min_index)
    if expected is None:
        assert not future.done()
        future.cancel()
        await asyncio.sleep(0)
        assert registry.waiting == 0  # a cancelled wait forgets itself
    else:
        assert future.result().member_id == expected


async def test_waiters_wake_on_the_matching_registration_only():
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2), config_kv(OTHER, 3)], revision=3)
    on_dir = registry.wait_member(TOKEN, None, 4)
    on_key = registry.wait_member(TOKEN, "b", 4)
    on_other = registry.wait_member(OTHER, None, 4)
    registry.apply([put(member_kv(TOKEN, "a", 4))], revision=4)
    assert on_dir.result().member_id == "a"
    assert not on_key.done() and not on_other.done()
    registry.apply([put(member_kv(TOKEN, "b", 5))], revision=5)
    assert on_key.result().member_id == "b"
    assert registry.waiting == 1
    registry.release_all()
    assert on_other.result() is None


async def test_waiters_of_an_expired_token_get_nothing():
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2)], revision=2)
    future = registry.wait_member(TOKEN, None, 3)
    registry.apply([Event(True, KeyValue(keys.cluster_config(TOKEN), b"", 0, 3, 0))], 3)
    assert future.result() is None


async def test_waiters_wake_after_a_resync():
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2)], revision=2)
    future = registry.wait_member(TOKEN, None, 3)
    registry.mark_unsynced("etcd gone")
    assert not registry.synced and registry.unsynced_reason == "etcd gone"
    registry.reset([config_kv(TOKEN, 2), member_kv(TOKEN, "a", 8)], revision=9)
    assert future.result().created == 8


async def test_wait_revision():
    registry = Registry()
    done = registry.wait_revision(0)
    later = registry.wait_revision(5)
    assert done.done() and not later.done()
    registry.apply([], revision=4)
    assert not later.done()
    registry.apply([], revision=5)
    assert later.done()


async def test_listeners_hear_which_tokens_changed():
    registry = Registry()
    heard: list[frozenset[str]] = []
    registry.add_listener(heard.append)
    registry.reset([config_kv(TOKEN, 2)], revision=2)
    registry.apply([put(member_kv(TOKEN, "a", 3))], revision=3)
    registry.apply([], revision=4)  # progress only: nothing changed
    assert heard == [frozenset({TOKEN}), frozenset({TOKEN})]


async def test_dropping_many_waiters_never_compares_them_field_by_field(monkeypatch):
    # 10,000 clients leaving at once once froze the loop for ~10 s: each removal scanned a
    # list with the dataclass __eq__. Waiters must be found by identity.
    from discoverd.store import registry as module

    def forbidden(self, other):
        raise AssertionError("waiters compared field by field")

    monkeypatch.setattr(module._MemberWaiter, "__eq__", forbidden, raising=False)
    registry = Registry()
    registry.reset([config_kv(TOKEN, 2)], revision=2)
    futures = [registry.wait_member(TOKEN, None, 10) for _ in range(10_000)]
    for future in reversed(futures):
        future.cancel()
    await asyncio.sleep(0)
    assert registry.waiting == 0


@pytest.mark.parametrize(
    ("stored", "value", "at"),
    [
        (
            b'{"value":"m=http://10.0.0.1:2380","at":1700000000.5}',
            "m=http://10.0.0.1:2380",
            1.7e9 + 0.5,
        ),
        (b'{"value":"m=http://10.0.0.1:2380"}', "m=http://10.0.0.1:2380", None),
        (b"m=http://10.0.0.1:2380", "m=http://10.0.0.1:2380", None),  # an older version's
        (b'{"value": 5}', '{"value": 5}', None),  # unreadable: shown as stored, no time
        (b"{not json", "{not json", None),
    ],
)
def test_a_registration_is_read_in_either_format(stored, value, at):
    member = member_from("a", KeyValue(keys.v2_member(TOKEN, "a"), stored, 4, 4, 7))
    assert (member.member_id, member.value, member.created) == ("a", value, 4)
    assert member.registered_at == at


def test_member_name_claims_are_not_part_of_the_view():
    registry = Registry()
    claim = KeyValue(keys.member_name(TOKEN, "Infra0"), b'{"peer_urls": []}', 3, 3, 7)
    registry.reset([config_kv(TOKEN, 2), claim], revision=3)
    assert keys.member_name(TOKEN, "Infra0").endswith("/names/infra0")
    cluster = registry.cluster(TOKEN)
    assert cluster is not None and cluster.members == () and cluster.api_members == ()


def named_kv(token: str, revision: int, name: str) -> KeyValue:
    value = ClusterConfig(size=3, created_at=0, name=name).model_dump_json().encode()
    return KeyValue(keys.cluster_config(token), value, revision, revision, 7)


def test_live_clusters_are_found_by_name():
    registry = Registry()
    registry.reset([named_kv(TOKEN, 2, "prod"), config_kv(OTHER, 3)], revision=3)
    assert registry.named("prod") == TOKEN and registry.named("web") is None
    registry.apply([put(named_kv(OTHER, 4, "web"))], revision=4)  # (a config rewritten)
    assert registry.named("web") == OTHER
    registry.apply([Event(deleted=True, kv=named_kv(TOKEN, 5, "prod"))], revision=5)
    assert registry.named("prod") is None and registry.named("web") == OTHER


def test_subscribers_hear_of_their_token_only_until_they_leave():
    registry = Registry()
    heard: list[str] = []
    leave = registry.subscribe(TOKEN, lambda: heard.append("t"))
    registry.subscribe(OTHER, lambda: heard.append("o"))
    registry.reset([config_kv(TOKEN, 2), config_kv(OTHER, 2)], revision=2)  # both appear
    assert sorted(heard) == ["o", "t"]
    heard.clear()
    registry.apply([put(KeyValue(keys.v3_member(TOKEN, "a"), b"m=http://10.0.0.1:2380", 3, 3, 7))], 3)  # fmt: skip
    assert heard == ["t"]
    leave()
    registry.apply([put(KeyValue(keys.v3_member(TOKEN, "b"), b"n=http://10.0.0.2:2380", 4, 4, 7))], 4)  # fmt: skip
    assert heard == ["t"] and registry.subscribed == 1
