"""The async facade over etcd3gw: the only code that sends a request to etcd.

etcd3gw is blocking (requests), so every call runs on a dedicated thread pool; each worker
thread has its own `Etcd3Client` (and so its own HTTP session) per endpoint. A call tries the
preferred endpoint first and fails over to the others on a transport error or a 5xx; the first
endpoint that answers becomes the preferred one. Every attempt has a timeout, and the attempts of
one call together stay under the 5 s that etcd's discovery client allows a request.

Foreign exceptions stop here: transport failures become `errors.Unavailable`, and etcd's own
refusals (a missing lease, a malformed request) become `EtcdRejected`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
)

from discoverd.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# All attempts of one call (one per endpoint) stay under this; etcd's client gives us 5 s.
CALL_BUDGET = 4.0
RANGE_PAGE = 5000

_TRANSIENT = (ConnectionFailedError, ConnectionTimeoutError, InternalServerError)


class EtcdRejected(Exception):
    """etcd answered, and refused the request (e.g. `requested lease not found`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A decoded etcd key-value with the metadata discoverd uses."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


def decode_kv(item: dict[str, Any]) -> KeyValue:
    """A key-value as grpc-gateway renders it (base64 bytes, int64 as strings)."""
    return KeyValue(
        key=base64.b64decode(item["key"]).decode(errors="replace"),
        value=base64.b64decode(item.get("value", "")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


class EtcdGateway:
    """Blocking etcd3gw calls made awaitable, with endpoint failover and bounded time."""

    def __init__(self, endpoints: Sequence[str], timeout: float, workers: int = 24) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = tuple(endpoints)
        per_attempt = max(0.5, min(timeout, CALL_BUDGET / len(self.endpoints)))
        self._timeout = (min(1.0, per_attempt), per_attempt)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etcd")
        self._local = threading.local()
        self._preferred = 0
        self.on_failure: Callable[[], None] = lambda: None  # called per failed attempt

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def new_client(self, index: int, timeout: Any = None) -> Etcd3Client:
        parts = urlsplit(self.endpoints[index])
        session = requests.Session()
        session.trust_env = False  # no proxies or .netrc from the environment for etcd
        return Etcd3Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if parts.scheme == "https" else 2379),
            protocol=parts.scheme,
            timeout=self._timeout if timeout is None else timeout,  # type: ignore[arg-type]
            api_path="/v3/",  # etcd >= 3.4; skips a version probe per client
            session=session,
        )

    def _client(self, index: int) -> Etcd3Client:
        clients: dict[int, Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if index not in clients:
            clients[index] = self.new_client(index)
        return clients[index]

    def call_sync(self, op: Callable[[Etcd3Client], T]) -> T:
        """Run `op` against the preferred endpoint, failing over to the others."""
        failures: list[str] = []
        start = self._preferred
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            try:
                result = op(self._client(index))
            except (*_TRANSIENT, requests.RequestException) as exc:
                failures.append(f"{self.endpoints[index]}: {type(exc).__name__}")
            except Etcd3Exception as exc:
                raise EtcdRejected(_detail(exc)) from exc
            except ValueError:  # a 200 with a body that is not JSON
                failures.append(f"{self.endpoints[index]}: malformed response")
            else:
                self._preferred = index
                return result
            self.on_failure()
        raise Unavailable("backing etcd is unavailable (" + "; ".join(failures) + ")")

    async def call(self, op: Callable[[Etcd3Client], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call_sync, op)

    # -- operations -------------------------------------------------------------------------

    async def txn(self, txn: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(lambda c: dict(c.transaction(txn)))
        return result

    async def grant_lease(self, ttl: int) -> int:
        return await self.call(lambda c: c.lease(ttl).id)

    async def status(self) -> dict[str, Any]:
        return await self.call(lambda c: dict(c.status()))

    async def alarms(self) -> list[str]:
        """The alarms raised in the etcd cluster (`NOSPACE`, `CORRUPT`), sorted; [] if none."""

        def op(c: Etcd3Client) -> list[str]:
            result = c.post(c.get_url("/maintenance/alarm"), json={"action": "GET"})
            return sorted({str(item.get("alarm", "")) for item in result.get("alarms", [])})

        return await self.call(op)

    async def newest_revision(self, prefix: str) -> int:
        """The newest mod revision of any key under `prefix` (0 if none): a cheap probe."""
        payload = {
            "key": b64(prefix),
            "range_end": b64(prefix_end(prefix)),
            "limit": 1,
            "sort_order": "DESCEND",
            "sort_target": "MOD",
            "keys_only": True,
        }

        def op(c: Etcd3Client) -> int:
            kvs = c.post(c.get_url("/kv/range"), json=payload).get("kvs", [])
            return int(kvs[0]["mod_revision"]) if kvs else 0

        return await self.call(op)

    async def get(self, key: str) -> tuple[int, KeyValue | None]:
        """One key and the store revision at which it was read (a linearizable read)."""

        def op(c: Etcd3Client) -> tuple[int, KeyValue | None]:
            result = c.post(c.get_url("/kv/range"), json={"key": b64(key)})
            kvs = result.get("kvs", [])
            return int(result["header"]["revision"]), (decode_kv(kvs[0]) if kvs else None)

        return await self.call(op)

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.range_prefix_sync, prefix)

    def range_prefix_sync(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision, read page by page."""
        end = b64(prefix_end(prefix))
        start = b64(prefix)
        revision = 0
        found: list[KeyValue] = []
        while True:
            payload: dict[str, Any] = {"key": start, "range_end": end, "limit": RANGE_PAGE}
            if revision:
                payload["revision"] = revision
            result: dict[str, Any] = self.call_sync(
                lambda c, p=payload: c.post(c.get_url("/kv/range"), json=p)  # type: ignore[misc]
            )
            revision = revision or int(result["header"]["revision"])
            page = [decode_kv(item) for item in result.get("kvs", [])]
            found.extend(page)
            if not result.get("more") or not page:
                return revision, found
            start = b64(page[-1].key.encode() + b"\x00")

    def open_watch(self, prefix: str, start_revision: int) -> WatchStream:
        """A streaming watch of `prefix` from `start_revision`, on the preferred endpoint."""
        failures: list[str] = []
        for step in range(len(self.endpoints)):
            index = (self._preferred + step) % len(self.endpoints)
            client = self.new_client(index, timeout=(self._timeout[0], None))
            request = {
                "create_request": {
                    "key": b64(prefix),
                    "range_end": b64(prefix_end(prefix)),
                    "start_revision": start_revision,
                    "progress_notify": True,
                }
            }
            try:
                response = client.session.post(
                    client.get_url("/watch"), json=request, stream=True, timeout=client.timeout
                )
                response.raise_for_status()
            except requests.RequestException as exc:
                client.session.close()
                failures.append(f"{self.endpoints[index]}: {type(exc).__name__}")
                continue
            return WatchStream(client, response)
        raise Unavailable("cannot open an etcd watch (" + "; ".join(failures) + ")")


class WatchStream:
    """The newline-delimited JSON responses of one etcd watch; `close()` ends it from any thread."""

    def __init__(self, client: Etcd3Client, response: requests.Response) -> None:
        self._client = client
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response.iter_lines(chunk_size=None):
                if line.strip():
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdRejected(str(message["error"]))
                    yield message.get("result", {})
        except (requests.RequestException, AttributeError, ValueError) as exc:
            raise Unavailable(f"etcd watch stream broke: {type(exc).__name__}") from exc

    def close(self) -> None:
        # A read blocked in another thread only returns when the socket itself is shut down.
        with contextlib.suppress(Exception):
            fileno = self._response.raw._fp.fileno()  # type: ignore[union-attr]
            with socket.fromfd(fileno, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()
        self._client.session.close()


def _detail(exc: Etcd3Exception) -> str:
    text = exc.detail_text or ""
    try:
        return str(json.loads(text).get("error") or json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text or type(exc).__name__
