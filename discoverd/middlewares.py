"""The HTTP middleware: domain errors mapped to HTTP once, and request metrics.

Every error leaves as a v2 keys API error body (`{"errorCode","message","cause","index"}`),
which is what etcd's discovery client decodes for any non-2xx answer and is plain enough JSON
for anyone else. Nothing leaves as a 500 with a trace: an unexpected exception is logged here
once and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from discoverd import appkeys
from discoverd.discovery.v2 import protocol
from discoverd.errors import (
    Conflict,
    DiscoverdError,
    Forbidden,
    Invalid,
    NameTaken,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# (HTTP status, v2 errorCode) for each domain error; the most specific class wins.
_MAPPING: list[tuple[type[DiscoverdError], int, int]] = [
    (TooLarge, 413, protocol.INVALID_FIELD),
    (Invalid, 400, protocol.INVALID_FIELD),
    (NotFound, 404, protocol.KEY_NOT_FOUND),
    (NameTaken, 409, protocol.NODE_EXISTS),
    (Conflict, 412, protocol.NODE_EXISTS),
    (Forbidden, 403, protocol.ROOT_READ_ONLY),
    (Unauthorized, 401, protocol.INVALID_FIELD),
    (RateLimited, 429, protocol.INVALID_FIELD),
    (Unavailable, 503, protocol.RAFT_INTERNAL),
]

_HTTP_CODES = {404: protocol.KEY_NOT_FOUND, 405: protocol.NOT_A_FILE, 413: protocol.INVALID_FIELD}


def error_response(request: web.Request, exc: DiscoverdError) -> web.Response:
    status, code = next(
        ((status, code) for kind, status, code in _MAPPING if isinstance(exc, kind)),
        (500, protocol.RAFT_INTERNAL),
    )
    if status == 412 and (request.match_info.route.name or "").startswith("api-"):
        status = 409  # 412 + errorCode 105 is etcd's v2 answer; the JSON API says 409 Conflict
    registry = request.app.get(appkeys.REGISTRY)
    index = registry.revision if registry is not None else 0
    headers = {"X-Etcd-Index": str(index)}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="discoverd admin"'
    body = protocol.render_error(code, exc.message, exc.cause, index)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: errors mapped to responses, every request counted and timed.

    A request whose client left before the answer (the handler is cancelled) is counted with
    status 499, as nginx does: nothing was sent, and it was not a server error."""
    started = time.perf_counter()
    status = 499
    try:
        response = await _answer(request, handler)
        status = response.status
        return response
    finally:
        route = request.match_info.route.resource
        request.app[appkeys.METRICS].observe_request(
            route.canonical if route is not None else "unmatched",
            request.method,
            status,
            time.perf_counter() - started,
        )


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DiscoverdError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, protocol.INVALID_FIELD)
        body = protocol.render_error(code, exc.reason, "", 0)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.Response(
            status=exc.status, body=body, content_type="application/json", headers=headers
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        logger.exception("unhandled error on %s", request.method)
        body = protocol.render_error(protocol.RAFT_INTERNAL, "internal error", "", 0)
        return web.Response(status=500, body=body, content_type="application/json")
