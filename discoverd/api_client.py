"""The HTTP client of the operator commands (`discoverd new`, `discoverd status`).

The client itself lives in `discoverd.join`, which discoverd serves to nodes as one
standard-library-only file and so cannot import anything: retries with backoff until a
deadline (each one said with its reason and the next attempt), 4xx answers final with the
server's reason, an unknown token said as such, a server URL without http:// or https://
refused before any request. This module adds how a `status` argument names a server and token.
"""

from __future__ import annotations

from discoverd.join import UNKNOWN_CLUSTER, ApiClient, ApiError, check_server

__all__ = ["UNKNOWN_CLUSTER", "ApiClient", "ApiError", "check_server", "split_url"]


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
