"""HTTP handlers of the admin API: bearer check -> registry view -> `fleet` rendering.

    GET /api/v1/admin/clusters[?name=SUB][&fingerprint=HEX][&limit=N][&offset=N]

Off (404 with the reason) unless `--admin-token-file` is given; 401 with `WWW-Authenticate:
Bearer` without the right token. The routes are registered before the token routes of v2
discovery, so `/api/v1/admin/...` never reaches them as a token.

A listing shows every write committed before the request, on whichever replica: it first waits
(bounded) until this replica's view has caught up with the newest revision under the registry
in etcd, so a token minted a moment ago is in it.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from discoverd import appkeys
from discoverd.admin import auth, fleet
from discoverd.errors import NotFound, Unavailable
from discoverd.store import keys


def setup_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/api/v1/admin/clusters", clusters, name="api-admin-clusters")


def _authorize(request: web.Request) -> None:
    token = request.app.get(appkeys.ADMIN_TOKEN)
    if token is None:
        raise NotFound("the admin API is off: start discoverd with --admin-token-file")
    auth.authorize(request.headers.get("Authorization"), token)


async def clusters(request: web.Request) -> web.Response:
    _authorize(request)
    query = fleet.parse_query(request.query)
    registry = request.app[appkeys.REGISTRY]
    if not registry.synced:
        raise Unavailable(f"registry unavailable: {registry.unsynced_reason}")
    newest = await request.app[appkeys.GATEWAY].newest_revision(keys.ROOT)
    await request.app[appkeys.DIRECTORY].caught_up(newest)
    # The token set is copied here (at C speed); the walk over the fleet runs in a thread. It
    # reads immutable Cluster objects, one atomic dict lookup at a time.
    tokens, revision = registry.tokens(), registry.revision
    body = await asyncio.to_thread(fleet.page, tokens, registry.cluster, query, time.time())
    body["revision"] = revision
    return web.json_response(body)
