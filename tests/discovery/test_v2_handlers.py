"""The v2 discovery routes through the real app on a real etcd, as etcd's client uses them."""

from __future__ import annotations

import asyncio
import time

import pytest

TOKEN_URL_PREFIX = "http://discoverd.test:8087/"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def new_token(client, size=3) -> str:
    response = await client.post(f"/new?size={size}")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert text.startswith(TOKEN_URL_PREFIX) and not text.endswith("\n")
    return text.removeprefix(TOKEN_URL_PREFIX)


async def register(client, token, member_id, value):
    return await client.put(
        f"/{token}/{member_id}?prevExist=false", data=f"value={value}", headers=FORM
    )


async def test_new_then_size(client):
    token = await new_token(client, 5)
    response = await client.get(f"/{token}/_config/size?quorum=false&recursive=false&sorted=false")
    assert response.status == 200
    assert int(response.headers["X-Etcd-Index"]) >= 2
    body = await response.json()
    assert body["action"] == "get"
    assert body["node"]["key"] == f"/{token}/_config/size"
    assert body["node"]["value"] == "5"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_new_default_size_is_3(client, method):
    token_url = await (await client.request(method, "/new")).text()
    token = token_url.rsplit("/", 1)[1]
    body = await (await client.get(f"/{token}/_config/size")).json()
    assert body["node"]["value"] == "3"


async def test_new_takes_size_from_a_form(client):
    response = await client.post("/new", data="size=7", headers=FORM)
    token = (await response.text()).rsplit("/", 1)[1]
    assert (await (await client.get(f"/{token}/_config/size")).json())["node"]["value"] == "7"


async def test_the_v2_bootstrap_sequence(client):
    token = await new_token(client, 3)
    listing = await client.get(f"/{token}?quorum=false&recursive=false&sorted=false")
    assert listing.status == 200
    index = int(listing.headers["X-Etcd-Index"])
    assert (await listing.json())["node"] == {
        "key": f"/{token}",
        "dir": True,
        "modifiedIndex": (await listing.json())["node"]["createdIndex"],
        "createdIndex": (await listing.json())["node"]["createdIndex"],
    }

    created = await register(client, token, "8e9e05c52164694d", "infra0=http://10.0.1.10:2380")
    assert created.status == 201
    node = (await created.json())["node"]
    assert (await created.json())["action"] == "create"
    assert node["value"] == "infra0=http://10.0.1.10:2380"
    assert node["createdIndex"] == node["modifiedIndex"] > index
    assert int(created.headers["X-Etcd-Index"]) >= node["createdIndex"]

    # Step 4: the node confirms it sees itself.
    self_wait = await client.get(
        f"/{token}/8e9e05c52164694d?recursive=false&wait=true&waitIndex={node['createdIndex']}"
    )
    assert (await self_wait.json())["node"]["key"] == f"/{token}/8e9e05c52164694d"

    # Step 6: a recursive wait blocks until the next registration, then returns just that one.
    listing = await client.get(f"/{token}")
    after = int(listing.headers["X-Etcd-Index"]) + 1
    held = await client.get(f"/{token}?recursive=true&wait=true&waitIndex={after}")
    assert held.status == 200  # headers are flushed at once, as etcd does
    assert int(held.headers["X-Etcd-Index"]) == after - 1
    body = asyncio.create_task(held.json())
    await asyncio.sleep(0.05)
    assert not body.done()
    started = time.monotonic()
    second = await register(client, token, "a", "infra1=http://10.0.1.11:2380")
    event = await body
    assert time.monotonic() - started < 1
    assert event["action"] == "create"
    assert event["node"]["key"] == f"/{token}/a"
    assert event["node"]["createdIndex"] == (await second.json())["node"]["createdIndex"]

    # A wait from an old index replays history at once (the full per-token history is kept).
    replay = await client.get(f"/{token}?recursive=true&wait=true&waitIndex=1")
    assert (await replay.json())["node"]["key"] == f"/{token}/8e9e05c52164694d"

    listing = await (await client.get(f"/{token}/")).json()
    assert [n["key"].rsplit("/", 1)[1] for n in listing["node"]["nodes"]] == [
        "8e9e05c52164694d",
        "a",
    ]


async def test_an_idle_wait_ends_with_an_empty_200(client):
    token = await new_token(client)
    started = time.monotonic()
    response = await client.get(f"/{token}?recursive=true&wait=true&waitIndex=999999999")
    assert response.status == 200
    assert await response.read() == b""
    assert 1.5 < time.monotonic() - started < 5  # --wait-timeout is 2s in these tests


async def test_duplicate_registration_is_412_105_and_keeps_the_first(client):
    token = await new_token(client)
    assert (await register(client, token, "abc", "n1=http://10.0.0.1:2380")).status == 201
    again = await register(client, token, "abc", "n1=http://10.0.0.99:2380")
    assert again.status == 412
    body = await again.json()
    assert body["errorCode"] == 105 and body["message"] == "Key already exists"
    assert body["cause"] == f"/{token}/abc"
    kept = await (await client.get(f"/{token}/abc")).json()
    assert kept["node"]["value"] == "n1=http://10.0.0.1:2380"


async def test_a_member_retrying_its_own_registration_succeeds(client):
    """etcd exits when its registration PUT fails (a 503 from a paused etcd that still committed
    it), and systemd restarts it with the identical PUT: that must succeed, or the member can
    never bootstrap. The answer is the registration that exists."""
    token = await new_token(client, 3)
    first = await register(client, token, "8e9e05c52164694d", "infra0=http://10.0.1.10:2380")
    assert first.status == 201
    retry = await register(client, token, "8e9e05c52164694d", "infra0=http://10.0.1.10:2380")
    assert retry.status == 201, await retry.text()
    assert (await retry.json())["node"] == (await first.json())["node"]
    listing = await (await client.get(f"/{token}")).json()
    assert [node["value"] for node in listing["node"]["nodes"]] == [
        "infra0=http://10.0.1.10:2380"  # what clients see is the plain value, once
    ]


async def test_registrations_are_capped(client):
    token = await new_token(client, 1)
    for i in range(3):
        assert (
            await register(client, token, f"{i + 1}", f"m{i}=http://10.0.0.{i}:2380")
        ).status == 201
    full = await register(client, token, "9", "m9=http://10.0.0.9:2380")
    assert full.status == 400
    assert "cluster is full" in (await full.json())["message"]


BAD_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "reason"),
    [
        ("GET", "/new?size=0", None, 400, 209, "size must be"),
        ("GET", "/new?size=-1", None, 400, 209, "size must be"),
        ("GET", "/new?size=100", None, 400, 209, "size must be"),
        ("GET", "/new?size=abc", None, 400, 209, "size must be"),
        ("GET", "/new?size=99999999999999999999999", None, 400, 209, "size must be"),
        ("GET", f"/{BAD_TOKEN}/_config/size", None, 404, 100, "Key not found"),
        ("GET", f"/{BAD_TOKEN}", None, 404, 100, "Key not found"),
        ("PUT", f"/{BAD_TOKEN}/abc", "value=a=http://10.0.0.1:2380", 404, 100, "Key not found"),
        ("GET", f"/{BAD_TOKEN}?wait=true&waitIndex=1", None, 404, 100, "Key not found"),
        ("GET", "/NOT-A-TOKEN", None, 400, 209, "32 lowercase hex"),
        ("GET", "/nosuchroute/x/y", None, 400, 209, "32 lowercase hex"),
        ("PUT", "/{token}/_config/size", "value=1", 403, 107, "read-only"),
        ("PUT", "/{token}", "value=x", 403, 107, "read-only"),
        ("DELETE", "/{token}/abc", None, 403, 107, "create-only"),
        ("DELETE", "/{token}", None, 403, 107, "create-only"),
        ("POST", "/{token}", "value=a=http://10.0.0.1:2380", 403, 107, "create-only"),
        ("PATCH", "/{token}/abc", None, 403, 107, "create-only"),
        ("OPTIONS", "/{token}/abc", None, 405, 102, "Method Not Allowed"),
        (
            "PUT",
            "/{token}/abc?prevExist=true",
            "value=a=http://10.0.0.1:2380",
            403,
            107,
            "create-only",
        ),
        ("PUT", "/{token}/abc", "value=a=http://10.0.0.1:2380&ttl=5", 400, 209, "do not take ttl"),
        ("PUT", "/{token}/abc", "novalue=1", 400, 209, "value is required"),
        ("PUT", "/{token}/abc", "value=garbage", 400, 209, "name=peerURL"),
        ("PUT", "/{token}/abc", "value=a=http://10.0.0.1", 400, 209, "port"),
        ("PUT", "/{token}/abc", "value=a%3Dhttp://10.0.0.1:2380%0A", 400, 209, "visible ASCII"),
        ("PUT", "/{token}/abc", "value=a%3Dhttp://10.0.0.1:2380%09", 400, 209, "visible ASCII"),
        ("PUT", "/{token}/abc", "value=a%3Dhttp://h%C3%A9.example:2380", 400, 209, "visible ASCII"),
        ("PUT", "/{token}/ABC", "value=a=http://10.0.0.1:2380", 400, 209, "member ID"),
        ("PUT", "/{token}/_hidden", "value=a=http://10.0.0.1:2380", 400, 209, "member ID"),
        ("PUT", "/{token}/abc", "value=a=http://" + "x" * 5000 + ":2380", 413, 209, "over 4096"),
        ("PUT", "/{token}/abc", "value=" + "x" * 70000, 413, 209, "Request Entity Too Large"),
        ("GET", "/{token}?wait=true&waitIndex=abc", None, 400, 209, "waitIndex"),
        ("GET", "/{token}?wait=true&waitIndex=-5", None, 400, 209, "waitIndex"),
        ("GET", "/{token}/abc", None, 404, 100, "Key not found"),
        ("GET", "/new?size=3%0a", None, 400, 209, "size must be"),
        ("GET", "/new?size=%203", None, 400, 209, "size must be"),
        ("POST", "/new", "size=3%0A", 400, 209, "size must be"),
        ("PUT", "/{token}/0", "value=a=http://10.0.0.1:2380", 400, 209, "never uses ID 0"),
        ("PUT", "/{token}/00ab", "value=a=http://10.0.0.1:2380", 400, 209, "no leading zero"),
        ("PUT", "/{token}/abc", b"value=a=http://10.0.0.1:2380\xff", 400, 209, "UTF-8"),
        ("PUT", "/{token}/abc", b"value=\xc3\x28=http://10.0.0.1:2380", 400, 209, "UTF-8"),
        ("POST", "/new", b"size=3&name=\xff", 400, 209, "UTF-8"),
        ("DELETE", "/api/v1/clusters/{token}", None, 405, 102, "Method Not Allowed"),
        ("POST", "/api/v1/clusters/{token}/members/infra0", "x", 405, 102, "Method Not Allowed"),
        ("GET", "/api/v1/clusters/{token}/members/infra0", None, 405, 102, "Method Not Allowed"),
        ("GET", "/api/v1/nosuchroute", None, 404, 100, "no such API route"),
    ],
)
async def test_bad_input_gets_its_4xx_and_the_service_stays_healthy(
    client, method, path, body, status, code, reason
):
    token = await new_token(client)
    response = await client.request(
        method, path.replace("{token}", token), data=body, headers=FORM if body else None
    )
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    error = await response.json()
    assert error["errorCode"] == code
    assert reason in error["message"]
    assert isinstance(error["index"], int)
    assert (await client.get("/health")).status == 200
    # Nothing was written by a refused request.
    listing = await (await client.get(f"/{token}")).json()
    assert "nodes" not in listing["node"]


async def test_a_405_under_the_api_names_the_methods_it_takes(client):
    token = await new_token(client)
    response = await client.delete(f"/api/v1/clusters/{token}/members/infra0")
    assert response.status == 405
    assert response.headers["Allow"] == "PUT"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Go's FormValue, which etcd's servers use, takes the first value, body before query.
        ("/{token}/abc", "value=a=http://10.0.0.1:2380&value=b=http://10.0.0.2:2380"),
        ("/{token}/abc?value=b=http://10.0.0.2:2380", "value=a=http://10.0.0.1:2380"),
    ],
)
async def test_the_first_value_is_taken(client, path, body):
    token = await new_token(client)
    response = await client.put(path.replace("{token}", token), data=body, headers=FORM)
    assert response.status == 201, await response.text()
    assert (await response.json())["node"]["value"] == "a=http://10.0.0.1:2380"


async def test_the_first_size_is_taken(client):
    response = await client.post("/new?size=5", data="size=7&size=9", headers=FORM)
    token = (await response.text()).rsplit("/", 1)[1]
    assert (await (await client.get(f"/{token}/_config/size")).json())["node"]["value"] == "7"


async def test_a_refused_request_echoes_little_of_its_input(client):
    response = await client.get("/new?size=" + "9" * 3000)
    assert response.status == 400
    assert len(await response.read()) < 400


async def test_health_and_metrics(client):
    health = await client.get("/health")
    assert health.status == 200
    body = await health.json()
    assert body["status"] == "ok" and body["registry"]["synced"] is True
    assert body["etcd"]["version"].startswith("3.")
    token = await new_token(client)
    await register(client, token, "1", "m=http://10.0.0.1:2380")
    await register(client, token, "1", "m=http://10.0.0.9:2380")
    text = await (await client.get("/metrics")).text()
    assert "discoverd_tokens_created_total 1.0" in text
    assert 'discoverd_registrations_total{result="created"} 1.0' in text
    assert 'discoverd_registrations_total{result="duplicate"} 1.0' in text
    assert (
        'discoverd_http_requests_total{method="PUT",route="/{token}/{rest}",status="412"} 1.0'
        in text
    )
    assert "discoverd_waits_in_flight 0.0" in text
    assert token not in text  # tokens never become label values


async def test_new_is_rate_limited_per_address(aiohttp_client, settings):
    from discoverd.app import build_app

    limited = await aiohttp_client(
        build_app(settings.model_copy(update={"new_rate": 1.0, "new_burst": 3}))
    )
    statuses = [(await limited.post("/new")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = await limited.post("/new")
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many new tokens" in (await refused.json())["message"]
    assert (await limited.get("/health")).status == 200


async def test_new_limits_each_client_behind_a_trusted_proxy(aiohttp_client, settings):
    from discoverd.app import build_app

    proxied = settings.model_copy(
        update={"new_rate": 1.0, "new_burst": 1, "trusted_proxy": ("127.0.0.0/8",)}
    )
    client = await aiohttp_client(build_app(proxied))
    one, two = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    assert (await client.post("/new", headers=one)).status == 200
    assert (await client.post("/new", headers=one)).status == 429
    assert (await client.post("/new", headers=two)).status == 200  # another client, its own bucket


@pytest.mark.parametrize(
    "value",
    [
        "infra0=http://6.6.6.6:2380",  # another id taking over infra0's DNS records
        "INFRA0=http://10.0.1.10:2380",  # names are compared lower-cased
        "Infra0=http://6.6.6.6:2380",
    ],
)
async def test_a_member_name_is_unique_per_cluster(client, value):
    token = await new_token(client, 3)
    first = await register(client, token, "8e9e05c52164694d", "infra0=http://10.0.1.10:2380")
    assert first.status == 201
    taken = await register(client, token, "1", value)
    assert taken.status == 412
    error = await taken.json()
    assert error["errorCode"] == 105
    assert "member name" in error["message"] and "8e9e05c52164694d" in error["message"]
    listing = await (await client.get(f"/{token}")).json()
    assert [node["key"] for node in listing["node"]["nodes"]] == [f"/{token}/8e9e05c52164694d"]
    records = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert [(m["name"], m["peer_urls"]) for m in records["members"]] == [
        ("infra0", ["http://10.0.1.10:2380"])
    ]


async def test_replicas_racing_for_one_name_cannot_both_win(aiohttp_client, settings):
    from discoverd.app import build_app

    replicas = [await aiohttp_client(build_app(settings)) for _ in range(2)]
    token = await new_token(replicas[0], 3)
    assert (await replicas[1].get(f"/{token}/_config/size")).status == 200
    answers = await asyncio.gather(
        *(
            register(replicas[i % 2], token, f"{i + 1:x}", f"infra0=http://10.0.1.{i}:2380")
            for i in range(6)
        )
    )
    assert sorted(answer.status for answer in answers) == [201] + [412] * 5


async def test_unknown_token_lookups_are_bounded(client):
    from discoverd import appkeys

    service = client.server.app[appkeys.DIRECTORY]
    token = await new_token(client)
    assert (await client.get(f"/{token}/_config/size")).status == 200  # now in the view
    for _ in range(8):
        await service._misses.acquire()  # every miss slot busy, as under a flood of made-up tokens
    try:
        started = time.monotonic()
        response = await client.get("/" + "9" * 32 + "/_config/size")
        assert response.status == 503
        assert "too many lookups" in (await response.json())["message"]
        assert time.monotonic() - started < 3
        # Known tokens are served from the view meanwhile.
        assert (await client.get(f"/{token}/_config/size")).status == 200
    finally:
        for _ in range(8):
            service._misses.release()
