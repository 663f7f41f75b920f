"""HTTP handlers of the cluster API: parse -> service -> render.

PUT /api/v1/clusters/<token>/members/<name>   {"peer_urls": [...], "client_urls": [...]}
GET /api/v1/clusters/<token>                  the JSON view of a cluster
"""

from __future__ import annotations

from aiohttp import web

from discoverd import appkeys
from discoverd.directory import rules
from discoverd.errors import Invalid


def setup_routes(app: web.Application, prefix: str) -> None:
    base = prefix + "/api/v1/clusters/{token}"
    app.router.add_put(base + "/members/{name}", put_member, name="api-member")
    app.router.add_get(base, view, name="api-cluster")


def _token(request: web.Request) -> str:
    token = request.match_info["token"]
    if not rules.TOKEN_RE.fullmatch(token):
        raise Invalid("a discovery token is 32 lowercase hex characters", cause=token[:64])
    return token


async def put_member(request: web.Request) -> web.Response:
    token = _token(request)
    body = await request.read()
    service = request.app[appkeys.CLUSTERS]
    member = await service.put_member(token, request.match_info["name"], body)
    return web.json_response(
        {
            "name": member.name,
            "peer_urls": list(member.record.peer_urls),
            "client_urls": list(member.record.client_urls),
        }
    )


async def view(request: web.Request) -> web.Response:
    return web.json_response(await request.app[appkeys.CLUSTERS].view(_token(request)))
