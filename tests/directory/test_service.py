"""The cluster directory on a real etcd: what every face gets from `Directory.register`."""

from __future__ import annotations

import pytest

from discoverd import appkeys
from discoverd.directory.service import RETRY_WINDOW, Directory, is_retry
from discoverd.errors import Conflict, Invalid
from discoverd.models import Member
from discoverd.store import keys

VALUE = "infra0=http://10.0.1.10:2380"
MEMBER_ID = "8e9e05c52164694d"


async def new_token(client, size: int) -> str:
    response = await client.post(f"/new?size={size}")
    assert response.status == 200
    return (await response.text()).rsplit("/", 1)[1]


def directory(client) -> Directory:
    return client.server.app[appkeys.DIRECTORY]


@pytest.mark.parametrize(
    ("value", "registered", "size", "age", "retry"),
    [
        (VALUE, 2, 3, 10 * RETRY_WINDOW, True),  # forming: the same value is the same member
        (VALUE, 3, 3, 0.0, True),
        (VALUE, 3, 3, RETRY_WINDOW, True),  # the window's last moment
        (VALUE, 3, 3, RETRY_WINDOW + 0.001, False),  # formed and past it: a lost data dir
        (VALUE, 3, 3, -5.0, True),  # another replica's clock ahead of ours
        ("infra0=http://10.0.1.99:2380", 1, 3, 0.0, False),  # another value: a duplicate
    ],
)
def test_is_retry(value, registered, size, age, retry):
    existing = Member(MEMBER_ID, VALUE, 5, registered_at=1_000_000.0)
    now = 1_000_000.0 + age
    assert (
        is_retry(existing, value, registered=registered, size=size, now=now, window=RETRY_WINDOW)
        is retry
    )


def test_a_registration_without_a_time_is_a_retry_only_while_forming():
    existing = Member(MEMBER_ID, VALUE, 5)  # stored by an older version: plain text
    assert is_retry(existing, VALUE, registered=1, size=3, now=0.0, window=RETRY_WINDOW)
    assert not is_retry(existing, VALUE, registered=3, size=3, now=0.0, window=RETRY_WINDOW)


async def test_a_formed_cluster_refuses_the_same_registration_after_the_window(client):
    """A size-1 cluster has formed once its one member registered. Its own retry succeeds
    within the window (the answer to the first PUT was lost); after the window the same PUT is
    a member that lost its data dir, refused as etcd itself would refuse a duplicate ID."""
    token = await new_token(client, 1)
    service = directory(client)
    first = await service.register(token, MEMBER_ID, VALUE)
    assert first.registered_at is not None
    at = first.registered_at
    again = await service.register(token, MEMBER_ID, VALUE, now=at + RETRY_WINDOW)
    assert again == first
    with pytest.raises(Conflict, match="Key already exists"):
        await service.register(token, MEMBER_ID, VALUE, now=at + RETRY_WINDOW + 1)
    # Over HTTP, within the window: the retry is answered with the registration that exists.
    retry = await client.put(
        f"/{token}/{MEMBER_ID}",
        data=f"value={VALUE}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert retry.status == 201
    assert (await retry.json())["node"]["createdIndex"] == first.created


async def test_registrations_are_stored_with_their_time_and_shown_plain(client):
    token = await new_token(client, 3)
    member = await directory(client).register(token, MEMBER_ID, VALUE, now=1234.5)
    gateway = client.server.app[appkeys.GATEWAY]
    _, stored = await gateway.get(keys.v2_member(token, MEMBER_ID))
    assert stored is not None
    assert stored.value == b'{"value":"infra0=http://10.0.1.10:2380","at":1234.5}'
    assert member.value == VALUE and member.registered_at == 1234.5
    node = (await (await client.get(f"/{token}/{MEMBER_ID}")).json())["node"]
    assert node["value"] == VALUE


async def test_a_name_held_by_another_registration_is_refused_on_every_face(client):
    token = await new_token(client, 3)
    service = directory(client)
    await service.register(token, MEMBER_ID, VALUE)
    with pytest.raises(
        Conflict, match="member name INFRA0 is already registered by discovery registration 8e9e"
    ):
        await service.register(token, "1", "INFRA0=http://10.0.1.10:2380")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"name": None, "clients": None, "cidrs": (), "allow_root": False}),
        ({"clients": 0}, {"clients": 0}),  # zero client names is not the default
        ({"clients": 5, "allow_root": True}, {"clients": 5, "allow_root": True}),
        ({"name": "prod-a"}, {"name": "prod-a"}),
        (
            {"cidrs": ("10.1.0.0/16",), "dns_suffixes": ("Etcd.Example.com.",)},
            {"cidrs": ("10.1.0.0/16",), "dns_suffixes": ("etcd.example.com",)},
        ),
    ],
)
async def test_a_new_token_has_every_option_it_was_asked_for(client, options, expected):
    service = directory(client)
    token = await service.new_token(3, **options)
    cluster = await service.fresh_cluster(token)
    assert cluster.config.size == 3
    assert cluster.config.bootstrap_until == cluster.config.created_at + service.limits.token_ttl
    assert {field: getattr(cluster.config, field) for field in expected} == expected


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"cidrs": ("10.1.0.1/16",)}, "is not a network"),
        ({"dns_suffixes": ("not a domain",)}, "must be a domain"),
        ({"clients": 1000}, "less than or equal to 999"),
    ],
)
async def test_a_new_token_with_a_bad_option_is_refused(client, options, reason):
    with pytest.raises(Invalid, match=reason):
        await directory(client).new_token(3, **options)
