"""A small blocking client of discoverd's HTTP API, for the node-side and operator commands.

Transport failures and 5xx answers are retried with backoff until the caller's deadline (a
server that is starting, or an etcd election), each retry announced through the caller's `say`
with its reason and when the next attempt comes; 4xx answers are final and raised with the
server's own reason. A server URL without an http:// or https:// scheme is refused before any
request. Nothing here prints: callers turn `ApiError` into one line on stderr.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
UNKNOWN_CLUSTER = "no such discovery token (expired or mistyped)"


class ApiError(Exception):
    """The server refused (4xx) or could not be reached before the deadline."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def check_server(url: str) -> str:
    """`url` without a trailing slash if it is an http(s) URL with a host; else ApiError."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(
            f"the server {url!r} is not an http:// or https:// URL "
            f"(for example http://{url.strip().split('://')[-1] or '127.0.0.1:8087'})"
        )
    return url.strip().rstrip("/")


def _quiet(_line: str) -> None:
    return None


@dataclass
class ApiClient:
    server: str
    deadline: float  # time.monotonic() after which retries stop
    request_timeout: float = 10.0
    say: Callable[[str], None] = _quiet  # one line per retry: the reason, the next attempt

    def __post_init__(self) -> None:
        self.server = check_server(self.server)

    def get_json(self, path: str) -> Any:
        return json.loads(self.call("GET", path))

    def get_text(self, path: str) -> str:
        return self.call("GET", path).decode()

    def send_json(self, method: str, path: str, body: Any) -> Any:
        return json.loads(self.call(method, path, json.dumps(body).encode()))

    def cluster(self, token: str) -> Any:
        """The JSON view of a cluster; an unknown token is said so, not as etcd's words."""
        try:
            return self.get_json(f"/api/v1/clusters/{token}")
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(UNKNOWN_CLUSTER, 404) from None
            raise

    def call(self, method: str, path: str, data: bytes | None = None) -> bytes:
        url = self.server + path
        delay = BACKOFF_START
        while True:
            request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
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
            left = self.deadline - time.monotonic()
            if delay > left:
                raise ApiError(f"gave up: {problem}")
            self.say(f"{problem}; next attempt in {delay:g}s (giving up in {left:.0f}s)")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or f"HTTP {exc.code}"


def split_url(url_or_token: str, server: str) -> tuple[str, str]:
    """(server, token) from a discovery URL, or from a bare token and the server."""
    text = url_or_token.strip().rstrip("/")
    if "://" in text:
        base, _, token = text.rpartition("/")
        return check_server(base), token
    if "/" in text or ":" in text:
        raise ApiError(
            f"{url_or_token!r} is neither a token nor a discovery URL with http:// or https://"
        )
    return check_server(server), text
