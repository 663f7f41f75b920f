"""The cluster API on a real etcd: the member API, named clusters, the JSON view."""

from __future__ import annotations

import pytest

from discoverd.app import build_app
from discoverd.directory import rules
from discoverd.directory.rules import cluster_label as label

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def new_token(client, query="size=3") -> str:
    response = await client.post(f"/new?{query}")
    assert response.status == 200, await response.text()
    return (await response.text()).rsplit("/", 1)[1]


async def test_member_api_registers_create_only(client):
    token = await new_token(client)
    body = {"peer_urls": ["https://10.0.0.1:2380"], "client_urls": ["https://10.0.0.1:2379"]}
    response = await client.put(f"/api/v1/clusters/{token}/members/infra0", json=body)
    assert response.status == 200
    assert await response.json() == {"name": "infra0", **body}
    # The same record again is fine (join re-runs); another one would repoint DNS: refused.
    assert (await client.put(f"/api/v1/clusters/{token}/members/infra0", json=body)).status == 200
    hijack = {"peer_urls": ["https://10.6.6.6:2380"], "client_urls": ["https://10.6.6.6:2379"]}
    refused = await client.put(f"/api/v1/clusters/{token}/members/infra0", json=hijack)
    assert refused.status == 409 and "create-only" in (await refused.json())["message"]
    body["client_urls"] = ["https://10.0.0.1:2379"]
    await client.put(
        f"/{token}/8e9e05c52164694d", data="value=infra1=http://10.0.0.2:2380", headers=FORM
    )
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert view["size"] == 3 and view["registered"] == 2 and view["complete"] is False
    assert view["members"] == [
        {
            "name": "infra0",
            "peer_urls": ["https://10.0.0.1:2380"],
            "client_urls": body["client_urls"],
            "joined": True,
            "etcd_registered": False,
            "protocol": None,
            "discovery_id": None,
        },
        {
            "name": "infra1",
            "peer_urls": ["http://10.0.0.2:2380"],
            "client_urls": [],
            "joined": False,
            "etcd_registered": True,
            "protocol": "v2",
            "discovery_id": "8e9e05c52164694d",
        },
    ]
    assert (view["joined"], view["registered_by_etcd"]) == (1, 1)
    assert view["dns"]["domains"] == [f"{label(token)}.etcd.internal"]
    assert view["dns"]["srv"] == sorted(
        [
            f"_etcd-server-ssl._tcp.{label(token)}.etcd.internal",
            f"_etcd-client-ssl._tcp.{label(token)}.etcd.internal",
            f"_etcd-server._tcp.{label(token)}.etcd.internal",
        ]
    )


async def test_named_cluster(client):
    name = "prod-" + rules.new_token()[:8]
    token = await new_token(client, f"size=3&name={name}")
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert view["name"] == name
    assert view["dns"]["domains"] == [f"{label(token)}.etcd.internal", f"{name}.etcd.internal"]
    again = await client.post(f"/new?size=3&name={name}")
    assert again.status == 409
    assert "is taken" in (await again.json())["message"]


BAD_BODIES = [
    (b"not json", 400, "body must be JSON"),
    (b"[]", 400, "Input should be"),
    (b"{}", 400, "peer_urls"),
    (b'{"peer_urls": []}', 400, "peer_urls"),
    (b'{"peer_urls": ["http://10.0.0.1:2380"], "extra": 1}', 400, "extra"),
    (b'{"peer_urls": ["http://10.0.0.1"]}', 400, "port"),
    (b'{"peer_urls": ["ftp://10.0.0.1:1"]}', 400, "http"),
    (b'{"peer_urls": ["http://10.0.0.1:2380"], "client_urls": ["x"]}', 400, "http"),
    (
        b'{"peer_urls": ' + b'["http://10.0.0.1:2380"' + b',"http://10.0.0.1:2380"' * 20 + b"]}",
        400,
        "peer_urls",
    ),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_BODIES)
async def test_member_api_refuses_bad_bodies(client, body, status, reason):
    token = await new_token(client)
    response = await client.put(f"/api/v1/clusters/{token}/members/infra0", data=body)
    assert response.status == status
    assert reason in (await response.json())["message"]
    assert (await (await client.get(f"/api/v1/clusters/{token}")).json())["members"] == []


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/api/v1/clusters/{token}/members/bad.name", 400, "DNS label"),
        ("/api/v1/clusters/{token}/members/-x", 400, "DNS label"),
        ("/api/v1/clusters/NOTATOKEN/members/infra0", 400, "32 lowercase hex"),
        ("/api/v1/clusters/" + "0" * 32 + "/members/infra0", 404, "Key not found"),
    ],
)
async def test_member_api_refuses_bad_paths(client, path, status, reason):
    token = await new_token(client)
    body = {"peer_urls": ["http://10.0.0.1:2380"]}
    response = await client.put(path.replace("{token}", token), json=body)
    assert response.status == status
    assert reason in (await response.json())["message"]


@pytest.mark.parametrize(
    "query",
    ["name=Prod", "name=1prod", "name=prod_x", "name=ns", "name=" + "a" * 32, "name=prod.x"],
)
async def test_bad_cluster_names(client, query):
    response = await client.post(f"/new?size=3&{query}")
    assert response.status == 400
    assert "name must be" in (await response.json())["message"]


async def test_member_names_are_capped(client):
    token = await new_token(client, "size=1")
    statuses = []
    for name in ("a", "b", "c", "d", "a"):  # size 1 admits 3 names; a known name may update
        body = {"peer_urls": ["http://10.0.0.1:2380"]}
        statuses.append(
            (await client.put(f"/api/v1/clusters/{token}/members/{name}", json=body)).status
        )
    assert statuses == [200, 200, 200, 400, 200]


async def test_unknown_cluster_view_is_404(client):
    assert (await client.get("/api/v1/clusters/" + "1" * 32)).status == 404


async def test_routes_under_a_public_url_path(aiohttp_client, settings):
    app = build_app(settings.model_copy(update={"public_url": "http://x.test/disco"}))
    client = await aiohttp_client(app)
    url = await (await client.post("/disco/new")).text()
    assert url.startswith("http://x.test/disco/")
    token = url.rsplit("/", 1)[1]
    assert (await client.get(f"/disco/{token}/_config/size")).status == 200
    assert (await client.get(f"/disco/api/v1/clusters/{token}")).status == 200


async def test_deeply_nested_json_is_a_400_not_a_500(client):
    token = await new_token(client)
    response = await client.put(f"/api/v1/clusters/{token}/members/a", data=b"[" * 60000)
    assert response.status == 400
    assert "body must be JSON" in (await response.json())["message"]


async def test_an_unpublishable_member_never_stops_dns(client):
    from discoverd import appkeys

    token_a = await new_token(client)
    token_b = await new_token(client)
    body = {"peer_urls": ["http://10.0.0.1:2380"]}
    assert (await client.put(f"/api/v1/clusters/{token_b}/members/ok", json=body)).status == 200
    # Even if a bad cluster reached the zone (e.g. written by an older version), the others
    # stay published and the responder keeps answering.
    zone_follow = client.server.app[appkeys.REGISTRY]._listeners[-1]
    registry = client.server.app[appkeys.REGISTRY]
    bad = registry.cluster(token_a)
    from dataclasses import replace

    from discoverd.models import ApiMember, MemberRecord

    broken = replace(
        bad,
        api_members=(ApiMember("x", MemberRecord(peer_urls=("http://[fe80::1%eth0]:2380",)), 1),),
    )
    registry._clusters[token_a] = broken
    zone_follow(frozenset({token_a, token_b}))
    responder = client.server.app[appkeys.DNS_RESPONDER]
    import dns.message

    reply = responder.respond(
        dns.message.make_query(f"ok.{label(token_b)}.etcd.internal", "A").to_wire(), tcp=False
    )
    assert dns.message.from_wire(reply).answer


PEER = "http://10.0.1.10:2380"


async def put_api(client, token, name, peer):
    body = {"peer_urls": [peer], "client_urls": ["http://10.0.1.10:2379"]}
    return await client.put(f"/api/v1/clusters/{token}/members/{name}", json=body)


async def put_v2(client, token, value, member_id="8e9e05c52164694d"):
    return await client.put(f"/{token}/{member_id}", data=f"value={value}", headers=FORM)


@pytest.mark.parametrize("api_first", [True, False])
@pytest.mark.parametrize(
    ("name", "peer", "api_status", "v2_status"),
    [
        # `discoverd join` registers the node, and the etcd it set up registers itself.
        ("infra0", PEER, 200, 201),
        ("INFRA0", PEER, 409, 412),  # the same node, but DNS would publish two spellings
        ("infra0", "http://6.6.6.6:2380", 409, 412),  # another node under infra0's name
    ],
)
async def test_member_api_and_discovery_share_member_names(
    client, api_first, name, peer, api_status, v2_status
):
    token = await new_token(client)
    if api_first:
        assert (await put_api(client, token, "infra0", PEER)).status == 200
        second = await put_v2(client, token, f"{name}={peer}")
        assert second.status == v2_status, await second.text()
    else:
        assert (await put_v2(client, token, f"infra0={PEER}")).status == 201
        second = await put_api(client, token, name, peer)
        assert second.status == api_status, await second.text()
    if second.status >= 400:
        assert "already registered" in (await second.json())["message"]
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert {url for member in view["members"] for url in member["peer_urls"]} == {PEER}


async def test_member_api_names_are_unique_case_aside(client):
    token = await new_token(client)
    assert (await put_api(client, token, "infra0", PEER)).status == 200
    other_case = await put_api(client, token, "INFRA0", PEER)
    assert other_case.status == 409
    assert "member API record infra0" in (await other_case.json())["message"]
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert [member["name"] for member in view["members"]] == ["infra0"]


async def put_v3(client, token, value, member_id="8e9e05c52164694d"):
    import grpc

    from discoverd import appkeys
    from discoverd.discovery.v3.pb import discovery_pb2 as pb
    from discoverd.discovery.v3.pb import discovery_pb2_grpc as rpc

    port = client.server.app[appkeys.GRPC_PORT]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        key = f"/_etcd/registry/{token}/members/{member_id}".encode()
        await rpc.KVStub(channel).Put(pb.PutRequest(key=key, value=value.encode()))


@pytest.mark.parametrize(
    ("joined", "etcd", "expected"),
    [
        # `discoverd join` wrote the record; the etcd it set up has not registered (yet, or ever)
        (True, None, {"joined": True, "etcd_registered": False, "protocol": None}),
        # the etcd process itself registered, through either discovery protocol
        (True, "v2", {"joined": True, "etcd_registered": True, "protocol": "v2"}),
        (True, "v3", {"joined": True, "etcd_registered": True, "protocol": "v3"}),
        # a hand-started etcd with --discovery: no member API record
        (False, "v3", {"joined": False, "etcd_registered": True, "protocol": "v3"}),
    ],
)
async def test_the_view_says_who_registered_a_member(client, joined, etcd, expected):
    token = await new_token(client)
    if joined:
        assert (await put_api(client, token, "infra0", PEER)).status == 200
    if etcd == "v2":
        assert (await put_v2(client, token, f"infra0={PEER}")).status == 201
    elif etcd == "v3":
        await put_v3(client, token, f"infra0={PEER}")
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    [member] = view["members"]
    assert {key: member[key] for key in expected} == expected
    assert (member["discovery_id"] is not None) is expected["etcd_registered"]
    assert view["registered"] == 1  # a name known either way
    assert view["joined"] == int(joined) and view["registered_by_etcd"] == int(bool(etcd))
