"""The v3 discovery face through the real app on a real etcd, with a real gRPC client: the RPCs
etcd >= 3.6 members and etcdctl make, and everything else refused with a status that says why."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from discoverd import appkeys
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.pb import discovery_pb2_grpc as rpc

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
Code = grpc.StatusCode


@pytest.fixture
async def channel(client):
    port = client.server.app[appkeys.GRPC_PORT]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


async def new_token(client, size=3) -> str:
    response = await client.post(f"/new?size={size}")
    assert response.status == 200
    return (await response.text()).rsplit("/", 1)[1]


def prefix(token: str) -> bytes:
    return f"/_etcd/registry/{token}/".encode()


def members_range(token: str) -> pb.RangeRequest:
    key = prefix(token) + b"members"
    return pb.RangeRequest(key=key, range_end=key[:-1] + b"t")


async def expect_status(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for word in words:
        assert word in details, details
    return details


async def test_the_member_sequence(client, channel):
    """What etcd's v3discovery does: size, members, register, members again, watch."""
    token = await new_token(client, 3)
    kv = rpc.KVStub(channel)
    size = await kv.Range(pb.RangeRequest(key=prefix(token) + b"_config/size"))
    assert [kv.value for kv in size.kvs] == [b"3"] and size.count == 1
    assert size.header.revision >= size.kvs[0].create_revision > 0
    empty = await kv.Range(members_range(token))
    assert list(empty.kvs) == [] and empty.header.revision > 0

    watch = rpc.WatchStub(channel).Watch()
    create = pb.WatchCreateRequest(
        key=members_range(token).key,
        range_end=members_range(token).range_end,
        start_revision=empty.header.revision + 1,
    )
    await watch.write(pb.WatchRequest(create_request=create))
    created = await watch.read()
    assert created.created and not created.canceled

    key = prefix(token) + b"members/8e9e05c52164694d"
    put = await kv.Put(pb.PutRequest(key=key, value=b"infra0=http://10.0.0.10:2380"))
    assert put.header.revision > empty.header.revision
    listed = await kv.Range(members_range(token))
    assert [(m.key, m.value) for m in listed.kvs] == [(key, b"infra0=http://10.0.0.10:2380")]
    assert listed.kvs[0].create_revision == put.header.revision

    event = await asyncio.wait_for(watch.read(), 10)
    assert event.watch_id == created.watch_id
    assert [e.kv.key for e in event.events] == [key]
    assert event.events[0].kv.create_revision == put.header.revision
    watch.cancel()


async def test_v2_and_v3_share_one_registry_but_never_one_token(client, channel):
    """A v3 registration is seen by every face; but etcd folds the discovery URL (v2) or
    token (v3) into the cluster ID, so a token bootstrapping through one protocol refuses the
    other (the real 3.6 binary, given one of each, logs "cluster ID mismatch" forever)."""
    kv = rpc.KVStub(channel)
    v3_token = await new_token(client, 3)
    v3_key = prefix(v3_token) + b"members/aaaa"
    await kv.Put(pb.PutRequest(key=v3_key, value=b"via-v3=http://10.0.0.1:2380"))
    directory = await (await client.get(f"/{v3_token}")).json()
    assert [n["value"] for n in directory["node"]["nodes"]] == ["via-v3=http://10.0.0.1:2380"]
    view = await (await client.get(f"/api/v1/clusters/{v3_token}")).json()
    assert [m["name"] for m in view["members"]] == ["via-v3"]
    assert view["discovery_v3"]["token"] == v3_token
    assert view["discovery_v3"]["flags"].startswith(f"--discovery-token={v3_token} ")
    mixed = await client.put(
        f"/{v3_token}/bbbb", data="value=via-v2=http://10.0.0.2:2380", headers=FORM
    )
    assert mixed.status == 403
    assert "same protocol" in (await mixed.json())["message"]

    v2_token = await new_token(client, 3)
    v2 = await client.put(f"/{v2_token}/bbbb", data="value=via-v2=http://10.0.0.2:2380", headers=FORM)  # fmt: skip
    assert v2.status == 201
    listed = await kv.Range(members_range(v2_token))
    assert [(m.key, m.value) for m in listed.kvs] == [
        (prefix(v2_token) + b"members/bbbb", b"via-v2=http://10.0.0.2:2380")
    ]
    await expect_status(
        kv.Put(
            pb.PutRequest(key=prefix(v2_token) + b"members/cc", value=b"c=http://10.0.0.3:2380")
        ),
        Code.PERMISSION_DENIED,
        "same protocol",
    )
    listed = await kv.Range(members_range(v2_token))
    assert len(listed.kvs) == 1


async def test_unknown_token_reads_as_an_empty_range(client, channel):
    kv = rpc.KVStub(channel)
    missing = "0" * 31 + "1"
    size = await kv.Range(pb.RangeRequest(key=prefix(missing) + b"_config/size"))
    assert list(size.kvs) == [] and size.count == 0 and size.header.revision > 0
    await expect_status(
        kv.Put(pb.PutRequest(key=prefix(missing) + b"members/1", value=b"a=http://1.2.3.4:2380")),
        Code.NOT_FOUND,
    )


async def test_a_prefix_range_is_clipped_to_its_token(client, channel):
    first, second = sorted([await new_token(client, 1), await new_token(client, 1)])
    kv = rpc.KVStub(channel)
    for token in (first, second):
        member = prefix(token) + b"members/1"
        await kv.Put(pb.PutRequest(key=member, value=f"m{token[:4]}=http://10.0.0.1:2380".encode()))
    # Everything from the smaller token on: the larger one's keys must not appear.
    everything = await kv.Range(pb.RangeRequest(key=prefix(first)[:-1], range_end=b"\x00"))
    assert {kv.key[: len(prefix(first))] for kv in everything.kvs} == {prefix(first)}
    assert everything.count == 2  # the size key and the member


async def test_range_options(client, channel):
    token = await new_token(client, 5)
    kv = rpc.KVStub(channel)
    revisions = []
    for member_id in ("c", "a", "b"):
        key = prefix(token) + b"members/" + member_id.encode()
        put = await kv.Put(
            pb.PutRequest(key=key, value=f"n{member_id}=http://10.0.0.1:2380".encode())
        )
        revisions.append(put.header.revision)
    limited = await kv.Range(pb.RangeRequest(key=members_range(token).key, range_end=members_range(token).range_end, limit=2))  # fmt: skip
    assert (len(limited.kvs), limited.more, limited.count) == (2, True, 3)
    by_create = await kv.Range(
        pb.RangeRequest(
            key=members_range(token).key,
            range_end=members_range(token).range_end,
            sort_target=pb.RangeRequest.CREATE,
            sort_order=pb.RangeRequest.DESCEND,
        )
    )
    assert [m.create_revision for m in by_create.kvs] == sorted(revisions, reverse=True)
    counted = await kv.Range(pb.RangeRequest(key=members_range(token).key, range_end=members_range(token).range_end, count_only=True))  # fmt: skip
    assert (list(counted.kvs), counted.count) == ([], 3)
    past = await kv.Range(pb.RangeRequest(key=members_range(token).key, range_end=members_range(token).range_end, revision=revisions[0]))  # fmt: skip
    assert [m.key for m in past.kvs] == [prefix(token) + b"members/c"]
    await expect_status(
        kv.Range(pb.RangeRequest(key=prefix(token) + b"_config/size", revision=10**12)),
        Code.OUT_OF_RANGE,
        "future revision",
    )


async def test_registrations_are_create_only(client, channel):
    token = await new_token(client, 3)
    kv = rpc.KVStub(channel)
    key = prefix(token) + b"members/abc"
    await kv.Put(pb.PutRequest(key=key, value=b"infra0=http://10.0.0.1:2380"))
    # The member's own retry (its Put timed out on the way back) succeeds while the cluster forms.
    again = await kv.Put(pb.PutRequest(key=key, value=b"infra0=http://10.0.0.1:2380"))
    assert again.header.revision > 0
    await expect_status(
        kv.Put(pb.PutRequest(key=key, value=b"infra0=http://6.6.6.6:2380")), Code.ALREADY_EXISTS
    )
    await expect_status(  # another ID, the same member name: refused, case aside
        kv.Put(
            pb.PutRequest(key=prefix(token) + b"members/abd", value=b"INFRA0=http://6.6.6.6:2380")
        ),
        Code.ALREADY_EXISTS,
        "already registered",
    )
    listed = await kv.Range(members_range(token))
    assert [m.value for m in listed.kvs] == [b"infra0=http://10.0.0.1:2380"]


@pytest.mark.parametrize(
    ("key", "value", "lease", "code", "words"),
    [
        ("{p}_config/size", b"5", 0, Code.PERMISSION_DENIED, ["size key is read-only"]),
        ("{p}members", b"a=http://1.2.3.4:2380", 0, Code.PERMISSION_DENIED, ["only"]),
        ("{p}other", b"a=http://1.2.3.4:2380", 0, Code.PERMISSION_DENIED, ["only"]),
        ("/", b"x", 0, Code.PERMISSION_DENIED, ["one discovery token"]),
        ("/_etcd/registry/", b"x", 0, Code.PERMISSION_DENIED, ["one discovery token"]),
        ("{p}members/0", b"a=http://1.2.3.4:2380", 0, Code.INVALID_ARGUMENT, ["member ID"]),
        ("{p}members/1", b"a=http://1.2.3.4:2380", 7, Code.INVALID_ARGUMENT, ["lease"]),
        ("{p}members/1", b"not a registration", 0, Code.INVALID_ARGUMENT, []),
        ("{p}members/1", b"a=ftp://1.2.3.4:2380", 0, Code.INVALID_ARGUMENT, ["peer URL"]),
        ("{p}members/1", b"a=http://1.2.3.4:2380\n", 0, Code.INVALID_ARGUMENT, []),
        ("{p}members/1", "a=http://h\u00e9:2380".encode(), 0, Code.INVALID_ARGUMENT, ["ASCII"]),
        ("{p}members/1", b"a=http://1.2.3.4:2380," * 300, 0, Code.INVALID_ARGUMENT, []),
        ("{p}members/1" + "1" * 300, b"a=http://1.2.3.4:2380", 0, Code.INVALID_ARGUMENT, []),
    ],
)
async def test_bad_puts_are_refused_and_store_nothing(
    client, channel, key, value, lease, code, words
):
    token = await new_token(client, 3)
    kv = rpc.KVStub(channel)
    request = pb.PutRequest(
        key=key.format(p=prefix(token).decode()).encode(), value=value, lease=lease
    )
    await expect_status(kv.Put(request), code, *words)
    everything = await kv.Range(pb.RangeRequest(key=prefix(token), range_end=b"\x00"))
    assert [m.key for m in everything.kvs] == [prefix(token) + b"_config/size"]


@pytest.mark.parametrize("key", [b"/", b"/_etcd/registry/", b"/_etcd/", b"/discoverd/v1/"])
async def test_ranges_over_other_prefixes_are_refused(client, channel, key):
    await expect_status(
        rpc.KVStub(channel).Range(pb.RangeRequest(key=key, range_end=b"\x00")),
        Code.PERMISSION_DENIED,
        "one discovery token",
    )


async def test_authenticate_says_auth_is_not_enabled(channel):
    details = await expect_status(
        rpc.AuthStub(channel).Authenticate(pb.AuthenticateRequest(name="root", password="x")),
        Code.FAILED_PRECONDITION,
    )
    assert details == "etcdserver: authentication is not enabled"  # clientv3 matches this text


@pytest.mark.parametrize(
    ("method", "code", "words"),
    [
        ("/etcdserverpb.KV/DeleteRange", Code.PERMISSION_DENIED, ["create-only", "DeleteRange"]),
        ("/etcdserverpb.KV/Txn", Code.PERMISSION_DENIED, ["create-only", "Txn"]),
        ("/etcdserverpb.KV/Compact", Code.PERMISSION_DENIED, ["Compact"]),
        ("/etcdserverpb.KV/RangeStream", Code.UNIMPLEMENTED, ["KV/RangeStream"]),
        ("/etcdserverpb.Lease/LeaseGrant", Code.UNIMPLEMENTED, ["Lease/LeaseGrant"]),
        ("/etcdserverpb.Lease/LeaseKeepAlive", Code.UNIMPLEMENTED, ["Lease/LeaseKeepAlive"]),
        ("/etcdserverpb.Cluster/MemberList", Code.UNIMPLEMENTED, ["Cluster/MemberList"]),
        ("/etcdserverpb.Maintenance/Status", Code.UNIMPLEMENTED, ["Maintenance/Status"]),
        ("/etcdserverpb.Auth/AuthEnable", Code.UNIMPLEMENTED, ["Auth/AuthEnable"]),
        ("/grpc.health.v1.Health/Check", Code.UNIMPLEMENTED, ["discovery subset"]),
    ],
)
async def test_every_other_method_is_refused_with_a_reason(channel, method, code, words):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    await expect_status(call(b""), code, *words)


async def test_malformed_and_oversized_messages(client, channel):
    token = await new_token(client, 3)
    raw_put = channel.unary_unary("/etcdserverpb.KV/Put")
    await expect_status(raw_put(b"\x0a\xff\xff\xff\xff\x0f"), Code.INVALID_ARGUMENT, "malformed")
    raw_range = channel.unary_unary("/etcdserverpb.KV/Range")
    await expect_status(raw_range(b"\xff" * 16), Code.INVALID_ARGUMENT, "malformed")
    huge = pb.PutRequest(key=prefix(token) + b"members/1", value=b"a" * 200_000)
    await expect_status(rpc.KVStub(channel).Put(huge), Code.RESOURCE_EXHAUSTED)
    everything = await rpc.KVStub(channel).Range(pb.RangeRequest(key=prefix(token), range_end=b"\x00"))  # fmt: skip
    assert len(everything.kvs) == 1  # only the size key; the service still answers


async def test_watch_replays_history_and_refuses_bad_watches(client, channel):
    token = await new_token(client, 3)
    kv = rpc.KVStub(channel)
    first = await kv.Put(pb.PutRequest(key=prefix(token) + b"members/1", value=b"a=http://10.0.0.1:2380"))  # fmt: skip
    await kv.Put(pb.PutRequest(key=prefix(token) + b"members/2", value=b"b=http://10.0.0.2:2380"))
    watch = rpc.WatchStub(channel).Watch()
    replay = pb.WatchCreateRequest(
        key=members_range(token).key,
        range_end=members_range(token).range_end,
        start_revision=first.header.revision,
    )
    await watch.write(pb.WatchRequest(create_request=replay))
    created = await watch.read()
    assert created.created
    events = await asyncio.wait_for(watch.read(), 10)
    assert [e.kv.key[-1:] for e in events.events] == [b"1", b"2"]

    await watch.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/", range_end=b"\x00")))  # fmt: skip
    refused = await watch.read()
    assert refused.created and refused.canceled and "one discovery token" in refused.cancel_reason

    await watch.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=created.watch_id)))  # fmt: skip
    cancelled = await watch.read()
    assert cancelled.canceled and cancelled.watch_id == created.watch_id
    watch.cancel()


async def test_many_waiting_streams_all_wake(client, channel):
    """Thousands of members waiting on one token (one connection, opened at once) cost no etcd
    watch each; one registration wakes every one of them, and a stream whose client never reads
    holds nothing up."""
    token = await new_token(client, 3)
    streams = [rpc.WatchStub(channel).Watch() for _ in range(2000)]
    create = pb.WatchCreateRequest(key=members_range(token).key, range_end=members_range(token).range_end)  # fmt: skip
    for stream in streams:
        await stream.write(pb.WatchRequest(create_request=create))
    silent = rpc.WatchStub(channel).Watch()  # never read
    await silent.write(pb.WatchRequest(create_request=create))
    for stream in streams:
        assert (await stream.read()).created
    put = await rpc.KVStub(channel).Put(pb.PutRequest(key=prefix(token) + b"members/9", value=b"z=http://10.0.0.9:2380"))  # fmt: skip
    woken = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 30)
    assert {r.events[0].kv.create_revision for r in woken} == {put.header.revision}
    for stream in (*streams, silent):
        stream.cancel()
    health = await client.get("/health")
    assert health.status == 200


async def test_pinging_clients_keep_their_idle_watch(client):
    """clientv3 pings every 10 s even on an idle watch; grpc-core's default policy answers
    GOAWAY "too_many_pings" after two pings closer than 5 min. A client pinging every 100 ms
    (~40 pings, far past any strike limit) still gets its event on the same stream."""
    port = client.server.app[appkeys.GRPC_PORT]
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    token = await new_token(client, 3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        watch = rpc.WatchStub(channel).Watch()
        create = pb.WatchCreateRequest(key=members_range(token).key, range_end=members_range(token).range_end)  # fmt: skip
        await watch.write(pb.WatchRequest(create_request=create))
        assert (await watch.read()).created
        idle_until = asyncio.get_running_loop().time() + 4
        while asyncio.get_running_loop().time() < idle_until:  # idle, while the pings go out
            await asyncio.sleep(0.2)
            assert channel.get_state() is grpc.ChannelConnectivity.READY
        put = await rpc.KVStub(channel).Put(pb.PutRequest(key=prefix(token) + b"members/1", value=b"a=http://10.0.0.1:2380"))  # fmt: skip
        event = await asyncio.wait_for(watch.read(), 10)
        assert event.events[0].kv.create_revision == put.header.revision
        watch.cancel()
