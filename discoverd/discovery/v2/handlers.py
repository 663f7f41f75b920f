"""HTTP handlers of the etcd v2 discovery protocol: parse -> service -> render, nothing else.

    GET|POST /new?size=N               a new discovery URL (text/plain)
    GET      /<token>[/]               the registrations (v2 directory, no `_config`)
    GET      /<token>/_config/size     the cluster size
    GET      /<token>/<id>             one registration
    GET      ...?wait=true&waitIndex=W long-poll for the first registration at or past W
    PUT      /<token>/<id>             register (create-only: 412 + errorCode 105 if it exists)

The anonymous token routes are create-only: nothing under a token can be changed or deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import MultiDict

from discoverd import appkeys
from discoverd.directory import rules
from discoverd.discovery.v2 import protocol
from discoverd.discovery.v2.protocol import Target, TokenPath
from discoverd.errors import Forbidden, Invalid, NotFound, RateLimited
from discoverd.models import Cluster, Member
from discoverd.ratelimit import client_address

_UNSUPPORTED_WRITE_PARAMS = ("ttl", "prevValue", "prevIndex", "dir", "refresh", "sorted")


def setup_routes(app: web.Application, prefix: str) -> None:
    app.router.add_route("GET", f"{prefix}/new", new_token, name="new")
    app.router.add_route("POST", f"{prefix}/new", new_token)
    app.router.add_route("*", prefix + "/{token}", token_route, name="token")
    app.router.add_route("*", prefix + "/{token}/{rest:.*}", token_route, name="token-key")


async def new_token(request: web.Request) -> web.Response:
    app = request.app
    try:
        limiter = app[appkeys.NEW_LIMITER]
        forwarded = request.headers.get("X-Forwarded-For")
        limiter.check(client_address(request.remote, forwarded, limiter.trusted))
    except RateLimited:
        app[appkeys.METRICS].rate_limited.inc()
        raise
    params = await _params(request)
    service = app[appkeys.DIRECTORY]
    size = rules.parse_size(
        params.get("size"), default=service.limits.default_size, maximum=service.limits.max_size
    )
    name = rules.parse_cluster_name(params.get("name"))
    cidrs = _listed(params.getall("cidr", []))
    dns = _listed(params.getall("dns", []))
    clients = params.get("clients")
    if clients is not None and not rules.INDEX_RE.fullmatch(clients):
        raise Invalid(
            "clients must be a whole number (client certificate names)", cause=clients[:16]
        )
    root = params.get("root", "0")
    if root not in ("0", "1"):
        raise Invalid("root must be 1 (a client certificate may name etcd's root) or 0")
    token = await service.new_token(
        size, name, cidrs, dns, int(clients) if clients else None, allow_root=root == "1"
    )
    app[appkeys.METRICS].tokens_created.inc()
    return web.Response(text=f"{app[appkeys.SETTINGS].base_url}/{token}")


async def token_route(request: web.Request) -> web.StreamResponse:
    first = request.match_info["token"]
    if first == "api":  # /api/... is never a token: the JSON API's
        raise await _api_refusal(request)
    path = protocol.parse_token_path(
        request.match_info["token"], request.match_info.get("rest", "")
    )
    if request.method in ("GET", "HEAD"):
        if request.query.get("wait") == "true":
            return await _wait(request, path)
        return await _get(request, path)
    if request.method == "PUT":
        return await _put(request, path)
    if request.method in ("POST", "DELETE", "PATCH"):
        raise Forbidden(
            "discovery tokens are create-only: registrations cannot be changed or deleted",
            cause=path.key,
        )
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "PUT"])


async def _get(request: web.Request, path: TokenPath) -> web.Response:
    cluster = await request.app[appkeys.DIRECTORY].bootstrap_cluster(path.token)
    memo = f"{path.target.value}/{path.member_id}"
    body = cluster.memo.get(memo)
    if body is None:
        body = cluster.memo[memo] = protocol.render("get", _node(cluster, path))
    return _respond(request, body)


def _node(cluster: Cluster, path: TokenPath) -> dict[str, Any]:
    if path.target is Target.SIZE:
        return protocol.size_node(cluster)
    if path.target is Target.DIRECTORY:
        return protocol.directory_node(cluster, cluster.members)
    if path.target is Target.CONFIG_DIR:
        return protocol.config_dir_node(cluster)
    member = cluster.member(path.member_id)
    if member is None:
        raise NotFound("Key not found", cause=path.key)
    return protocol.member_node(cluster.token, member)


async def _wait(request: web.Request, path: TokenPath) -> web.StreamResponse:
    app = request.app
    service = app[appkeys.DIRECTORY]
    registry = app[appkeys.REGISTRY]
    raw_index = request.query.get("waitIndex", "0")
    if not rules.INDEX_RE.fullmatch(raw_index):
        raise Invalid("waitIndex must be a non-negative integer", cause=raw_index[:32])
    # During an etcd outage a wait on a known token is held (the view resumes when etcd is
    # back); only a token this replica has never seen needs etcd, and gets 503 meanwhile.
    if registry.synced or registry.cluster(path.token) is None:
        await service.bootstrap_cluster(path.token)
    index = registry.revision
    member_id = path.member_id if path.target is Target.MEMBER else None
    if path.target in (Target.SIZE, Target.CONFIG_DIR):
        future: asyncio.Future[Member | None] = asyncio.get_running_loop().create_future()
    else:
        future = service.wait(path.token, member_id, int(raw_index))
    if future.done() and future.result() is not None:
        return _reply(request, "create", protocol.member_node(path.token, future.result()))  # type: ignore[arg-type]

    # Flush the headers now, as etcd does, then write one event or, when the wait times out,
    # nothing: etcd's client treats an empty 200 as a keepalive and polls again at once.
    response = web.StreamResponse(headers={"X-Etcd-Index": str(index)})
    response.content_type = "application/json"
    await response.prepare(request)
    gauge = app[appkeys.METRICS].waits_in_flight
    gauge.inc()
    try:
        member = await asyncio.wait_for(future, app[appkeys.SETTINGS].wait_timeout)
    except TimeoutError:
        member = None
    finally:
        gauge.dec()
    try:
        if member is not None:
            body = protocol.render("create", protocol.member_node(path.token, member))
            await response.write(body)
        await response.write_eof()
    except ConnectionResetError:  # the client went away while it waited: nothing to tell it
        pass
    return response


async def _put(request: web.Request, path: TokenPath) -> web.Response:
    if path.target is not Target.MEMBER:
        raise Forbidden(f"{path.key} is read-only", cause=path.key)
    params = await _params(request)
    if params.get("prevExist", "false") != "false":
        raise Forbidden("registrations are create-only (prevExist=false)", cause=path.key)
    for name in _UNSUPPORTED_WRITE_PARAMS:
        if name in params:
            raise Invalid(f"discovery registrations do not take {name}", cause=name)
    value = params.get("value")
    if value is None:
        raise Invalid("value is required: value=name=peerURL", cause=path.key)
    member = await request.app[appkeys.DIRECTORY].register(path.token, path.member_id, value)
    return _reply(request, "create", protocol.member_node(path.token, member), status=201)


def _reply(
    request: web.Request, action: str, node: dict[str, Any], status: int = 200
) -> web.Response:
    return _respond(request, protocol.render(action, node), status)


def _respond(request: web.Request, body: bytes, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={"X-Etcd-Index": str(request.app[appkeys.REGISTRY].revision)},
    )


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _params(request: web.Request) -> MultiDict[str]:
    """Form fields of the body, then of the query; `get` takes the first, as Go's FormValue
    (which etcd's own servers use) does."""
    params: MultiDict[str] = MultiDict()
    if request.method in ("POST", "PUT") and request.content_type in _FORM_TYPES:
        try:
            form = await request.post()
        except (UnicodeDecodeError, ValueError) as exc:
            raise Invalid("the form body must be UTF-8 (percent-encode other bytes)") from exc
        params.extend((k, v) for k, v in form.items() if isinstance(v, str))
    params.extend(request.query.items())
    return params


async def _api_refusal(request: web.Request) -> web.HTTPException:
    """A request under /api/ that no JSON API route took: 405 with the methods the path does
    take, or 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name in ("token", "token-key"):
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        return web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    return web.HTTPNotFound(reason="no such API route")


def _listed(values: list[str]) -> tuple[str, ...]:
    """`cidr=a&cidr=b` and `cidr=a,b` alike."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())
