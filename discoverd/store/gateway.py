"""The async facade over etcd3gw: the only code that sends a request to etcd.

etcd3gw is blocking (requests), so every call runs on a dedicated thread pool; each worker
thread has its own `Etcd3Client` (and so its own HTTP session) per endpoint. A call tries the
preferred endpoint first and fails over to the others on a transport error or a 5xx; the first
endpoint that answers becomes the preferred one. Every attempt has a timeout, and the attempts of
one call together stay under the 5 s that etcd's discovery client allows a request.

Against a secured etcd (see `access.py`) every session carries the TLS files, and, with an RBAC
user, the auth token: the gateway authenticates on first use and again when etcd says the token
is invalid (simple tokens expire after 5 idle minutes; a restarted member forgets them), then
retries the request once.

Foreign exceptions stop here: transport failures become `errors.Unavailable` whose reason names
a TLS problem when there is one, refusals of discoverd itself (bad credentials, no permission)
become `AccessRefused` (an `Unavailable`), and etcd's other refusals (a missing lease, a
malformed request) become `EtcdRejected`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import threading
import time
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
from discoverd.store.access import (
    AccessRefused,
    EtcdAccess,
    TokenAuth,
    Verdict,
    explain_transport,
    judge,
    summarise,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# All attempts of one call (one per endpoint) stay under this; etcd's client gives us 5 s.
CALL_BUDGET = 4.0
RANGE_PAGE = 5000

PROBLEM_LOG_INTERVAL = 60.0  # the same configuration problem is logged at most this often

_TRANSIENT = (ConnectionFailedError, ConnectionTimeoutError, InternalServerError)
# requests' exceptions are OSErrors; so is a TLS file that cannot be read.
_TRANSPORT = (*_TRANSIENT, OSError)


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

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float,
        workers: int = 24,
        access: EtcdAccess | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = tuple(endpoints)
        self.access = access or EtcdAccess()
        per_attempt = max(0.5, min(timeout, CALL_BUDGET / len(self.endpoints)))
        self._timeout = (min(1.0, per_attempt), per_attempt)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etcd")
        self._local = threading.local()
        self._preferred = 0
        self._auth = TokenAuth()
        self._logged: dict[str, float] = {}
        self.on_failure: Callable[[], None] = lambda: None  # called per failed attempt

    @property
    def preferred_endpoint(self) -> str:
        """The endpoint that answered last: the one the next call tries first."""
        return self.endpoints[self._preferred]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def new_client(self, index: int, timeout: Any = None) -> Etcd3Client:
        parts = urlsplit(self.endpoints[index])
        session = requests.Session()
        session.trust_env = False  # no proxies, .netrc or REQUESTS_CA_BUNDLE from the environment
        self.access.configure(session)
        session.auth = self._auth
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
        failures: list[tuple[str, str]] = []
        start = self._preferred
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                result = self._attempt(self._client(index), op)
            except AccessRefused as exc:
                self._log_problem(exc.message)
                raise
            except _TRANSPORT as exc:
                failures.append((endpoint, explain_transport(exc, self.access, _scheme(endpoint))))
            except ValueError:  # a 200 with a body that is not JSON
                failures.append((endpoint, "malformed response"))
            else:
                self._preferred = index
                return result
            self.on_failure()
        reason = summarise(failures)
        if any(why.startswith("TLS:") for _, why in failures):
            self._log_problem(reason)
        raise Unavailable(reason)

    def _attempt(self, client: Etcd3Client, op: Callable[[Etcd3Client], T]) -> T:
        """`op` on one endpoint, authenticated; once more with a new token if etcd says so."""
        for last in (False, True):
            used = self._token(client)
            try:
                return op(client)
            except _TRANSIENT:
                raise
            except Etcd3Exception as exc:
                verdict, reason = judge(_detail(exc), self.access)
                if verdict is Verdict.REAUTHENTICATE and self.access.user and not last:
                    self._auth.invalidate(used)
                    continue
                if verdict is Verdict.REJECTED:
                    raise EtcdRejected(reason) from exc
                raise AccessRefused(reason) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _token(self, client: Etcd3Client) -> str | None:
        """The auth token to send (authenticating on this endpoint first if there is none)."""
        if not self.access.user:
            return None
        token = self._auth.token
        if token is not None:
            return token
        with self._auth.lock:
            if self._auth.token is None:
                self._auth.token = self._authenticate(client)
            return self._auth.token

    def _authenticate(self, client: Etcd3Client) -> str:
        payload = {"name": self.access.user, "password": self.access.password or ""}
        try:
            reply = client.post(client.get_url("/auth/authenticate"), json=payload)
        except _TRANSIENT:
            raise
        except Etcd3Exception as exc:
            detail = _detail(exc)
            if "authentication is not enabled" in detail:
                logger.warning("backing etcd has auth disabled: --etcd-user is not used")
                return ""
            verdict, reason = judge(detail, self.access)
            raise AccessRefused(reason if verdict is Verdict.REFUSED else detail) from exc
        logger.info("authenticated to the backing etcd as %r", self.access.user)
        return str(reply["token"])

    def _log_problem(self, problem: str) -> None:
        """Log a configuration problem when first seen, then at most once a minute."""
        now = time.monotonic()
        if now - self._logged.get(problem, -PROBLEM_LOG_INTERVAL) >= PROBLEM_LOG_INTERVAL:
            if len(self._logged) > 64:  # the problems of a configuration are few; stay bounded
                self._logged.clear()
            self._logged[problem] = now
            logger.error("%s", problem)

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

    async def revision(self, key: str) -> int:
        """etcd's current revision, from a linearizable count of the one key `key`: a probe
        that costs etcd one index lookup, however many keys it holds."""
        payload = {"key": b64(key), "count_only": True}

        def op(c: Etcd3Client) -> int:
            return int(c.post(c.get_url("/kv/range"), json=payload)["header"]["revision"])

        return await self.call(op)

    async def newest_revision(self, prefix: str) -> int:
        """The newest mod revision of any key under `prefix` (0 if none). etcd reads every key
        under `prefix` to sort them: its cost grows with the registry."""
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
        failures: list[tuple[str, str]] = []
        for step in range(len(self.endpoints)):
            index = (self._preferred + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
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
                used = self._token(self._client(index))  # bounded, unlike the watch's
                response = client.session.post(
                    client.get_url("/watch"), json=request, stream=True, timeout=client.timeout
                )
            except _TRANSPORT as exc:
                client.session.close()
                failures.append((endpoint, explain_transport(exc, self.access, _scheme(endpoint))))
                continue
            except AccessRefused:
                client.session.close()
                raise
            if response.status_code != requests.codes.ok:
                detail = response.text[:500]
                client.session.close()
                verdict, reason = judge(_detail_text(detail), self.access)
                if verdict is Verdict.REFUSED:
                    raise AccessRefused(reason)
                failures.append((endpoint, f"HTTP {response.status_code}"))
                continue
            return WatchStream(client, response, on_denied=self._forget(used))
        raise Unavailable(summarise(failures, "cannot open an etcd watch"))

    def _forget(self, used: str | None) -> Callable[[], None]:
        return lambda: self._auth.invalidate(used)


class WatchStream:
    """The newline-delimited JSON responses of one etcd watch; `close()` ends it from any thread.

    etcd refuses a watch by cancelling it at once with `permission denied`, which it also
    answers for an expired token: `on_denied` drops the token, so the next attempt takes a new
    one, and a real lack of permission is then reported by the full read that precedes it.
    """

    def __init__(
        self,
        client: Etcd3Client,
        response: requests.Response,
        on_denied: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._response = response
        self._on_denied = on_denied

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response.iter_lines(chunk_size=None):
                if line.strip():
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdRejected(str(message["error"]))
                    result: dict[str, Any] = message.get("result", {})
                    reason = str(result.get("cancel_reason", ""))
                    if result.get("canceled") and "permission denied" in reason:
                        self._on_denied()
                        raise Unavailable(f"backing etcd refused the watch: {reason}")
                    yield result
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
    return _detail_text(exc.detail_text or "") or type(exc).__name__


def _detail_text(text: str) -> str:
    """etcd's error message out of a grpc-gateway error body (JSON, or plain text)."""
    try:
        body = json.loads(text)
        return str(body.get("error") or body.get("message") or text)
    except (ValueError, AttributeError):
        return text


def _scheme(endpoint: str) -> str:
    return urlsplit(endpoint).scheme
