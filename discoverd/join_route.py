"""GET /api/v1/join.py: the node's join client, discoverd/join.py byte for byte.

A node fetches it with curl and runs it with the distribution's python3 (standard library
only), checking it against the SHA-256 that `discoverd new` printed: nothing is installed from
PyPI. The file is read once, when the routes are set up; the ETag is its SHA-256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from discoverd import join

PATH = "/api/v1/join.py"


def client_file() -> bytes:
    return Path(join.__file__).read_bytes()


def setup_routes(app: web.Application, prefix: str) -> None:
    body = client_file()
    headers = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "Cache-Control": "no-cache"}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers, content_type="text/x-python")

    app.router.add_get(prefix + PATH, serve, name="join-client")
