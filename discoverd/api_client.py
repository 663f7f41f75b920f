"""A small blocking client of discoverd's HTTP API, for the node-side and operator commands.

Transport failures and 5xx answers are retried with backoff until the caller's deadline (a
server that is starting, or an etcd election); 4xx answers are final and raised with the
server's own reason. Nothing here prints: callers turn `ApiError` into one line on stderr.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0


class ApiError(Exception):
    """The server refused (4xx) or could not be reached before the deadline."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ApiClient:
    server: str
    deadline: float  # time.monotonic() after which retries stop
    request_timeout: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    def get_json(self, path: str) -> Any:
        return json.loads(self.call("GET", path))

    def get_text(self, path: str) -> str:
        return self.call("GET", path).decode()

    def send_json(self, method: str, path: str, body: Any) -> Any:
        return json.loads(self.call(method, path, json.dumps(body).encode()))

    def call(self, method: str, path: str, data: bytes | None = None) -> bytes:
        url = self.server.rstrip("/") + path
        delay = BACKOFF_START
        while True:
            request = urllib.request.Request(url, data=data, method=method, headers=self.headers)  # noqa: S310
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:  # noqa: S310
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise ApiError(_reason(exc), exc.code) from None
                problem = f"{self.server} answered {exc.code}: {_reason(exc)}"
            except (urllib.error.URLError, OSError) as exc:
                problem = f"cannot reach {self.server}: {getattr(exc, 'reason', exc)}"
            if time.monotonic() + delay > self.deadline:
                raise ApiError(f"gave up: {problem}")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or f"HTTP {exc.code}"


def split_url(url_or_token: str, server: str | None) -> tuple[str, str]:
    """(server, token) from a discovery URL, or from a bare token and --server."""
    text = url_or_token.strip().rstrip("/")
    if "://" in text:
        base, _, token = text.rpartition("/")
        return base, token
    if server is None:
        raise ApiError("give the discovery URL, or the token with --server")
    return server.rstrip("/"), text
