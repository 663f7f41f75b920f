"""The v3 discovery RPCs: parse -> directory -> render, for Range, Put, Watch and Authenticate.

Reads (Range, Watch) answer from the registry view, never from etcd, except for a token the
view does not know yet (the directory asks etcd once). A Put is a registration, the same record
as a v2 PUT: it goes through `Directory.register`, so both faces share one set of rules.

Domain errors become gRPC statuses here (`STATUS`), once for the whole face.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from discoverd.directory.service import Directory
from discoverd.discovery.v3 import protocol, render
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.watches import WatchStream
from discoverd.errors import (
    Conflict,
    DiscoverdError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unavailable,
)
from discoverd.models import Cluster
from discoverd.store.registry import Registry

logger = logging.getLogger(__name__)

# The header's cluster and member IDs mean nothing to a discovery client; fixed, non-zero.
CLUSTER_ID = 0xD15C0
MEMBER_ID = 0xD15C0D
AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"  # clientv3 matches this text
FUTURE_REVISION = "etcdserver: mvcc: required revision is a future revision"

# Most specific class first.
STATUS: list[tuple[type[DiscoverdError], grpc.StatusCode]] = [
    (Invalid, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_of(exc: DiscoverdError) -> grpc.StatusCode:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), grpc.StatusCode.UNKNOWN)


def describe(exc: DiscoverdError) -> str:
    return f"{exc.message} ({exc.cause})" if exc.cause else exc.message


class Malformed:
    """What the deserializer hands over instead of a message it could not decode."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def parser(kind: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that never raises: a malformed message becomes `Malformed`, which
    the handler answers with INVALID_ARGUMENT (grpc's own answer would be a bare INTERNAL)."""

    def parse(data: bytes) -> Message | Malformed:
        try:
            return kind.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(str(exc) or "undecodable")

    return parse


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: DiscoverdError) -> NoReturn:
    await context.abort(status_of(exc), describe(exc))
    raise AssertionError("unreachable")  # abort() raises


class DiscoveryV3:
    """The handlers of the four RPCs, over the cluster directory."""

    def __init__(self, directory: Directory, on_rpc: Callable[[str, str], None]) -> None:
        self._directory = directory
        self._registry = directory.registry
        self._on_rpc = on_rpc  # (method, grpc code name) for metrics
        self._headers: render.Headers | None = None

    @property
    def registry(self) -> Registry:
        return self._registry

    def headers(self) -> render.Headers:
        """The serialized headers at the registry's revision (made once per revision)."""
        if self._headers is None or self._headers.revision != self._registry.revision:
            self._headers = render.Headers(self.header())
        return self._headers

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=CLUSTER_ID,
            member_id=MEMBER_ID,
            revision=self._registry.revision if revision is None else revision,
            raft_term=1,
        )

    # -- KV/Range ------------------------------------------------------------------------------

    async def _unary(
        self, method: str, answer: Awaitable[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """Await `answer`, count the RPC by its status, and map a domain error to a status."""
        try:
            response = await answer
        except DiscoverdError as exc:
            self._on_rpc(method, status_of(exc).name)
            await abort(context, exc)
        self._on_rpc(method, "OK")
        return response

    async def range(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._unary("Range", self._range(request), context)

    async def _range(self, raw: Any) -> pb.RangeResponse | bytes:
        request: pb.RangeRequest = _checked(raw, pb.RangeRequest)
        where = protocol.scope(request.key, request.range_end)
        if request.revision > self._registry.revision and self._registry.synced:
            raise _FutureRevision(FUTURE_REVISION)
        cluster = await self._lookup(where.token)
        if _plain(request):  # what members send, again and again: a shared, serialized answer
            return self.headers().range + render.range_body(cluster, where)
        found = protocol.select(cluster, where, request.revision) if cluster else []
        found = _filtered(found, request)
        count = len(found)
        more = 0 < request.limit < count
        if more:
            found = found[: request.limit]
        kvs = [] if request.count_only else [e.kv(request.keys_only) for e in found]
        return pb.RangeResponse(header=self.header(), kvs=kvs, more=more, count=count)

    async def _lookup(self, token: str) -> Cluster | None:
        try:
            return await self._directory.bootstrap_cluster(token)
        except NotFound:  # etcd's answer for a missing key: an empty range
            return None

    # -- KV/Put --------------------------------------------------------------------------------

    async def put(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._unary("Put", self._put(request), context)

    async def _put(self, raw: Any) -> pb.PutResponse:
        request: pb.PutRequest = _checked(raw, pb.PutRequest)
        token, member_id = protocol.registration_target(request.key)
        if request.lease:
            raise Invalid("registrations take no lease: they live as long as their token")
        if request.ignore_value or request.ignore_lease:
            raise Invalid("registrations are create-only: ignore_value/ignore_lease do not apply")
        value = protocol.registration_value(request.value)
        member = await self._directory.register(token, member_id, value, protocol="v3")
        return pb.PutResponse(header=self.header(max(member.created, self._registry.revision)))

    # -- Auth/Authenticate ---------------------------------------------------------------------

    async def authenticate(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # clientv3 authenticates when given a user and password; this answer (etcd's own when
        # auth is off) lets it go on without a token. Token scoping is discoverd's access control.
        self._on_rpc("Authenticate", "FAILED_PRECONDITION")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, AUTH_NOT_ENABLED)

    # -- Watch/Watch ---------------------------------------------------------------------------

    async def watch(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchResponse | bytes]:
        self._on_rpc("Watch", "OK")
        stream = WatchStream(self, describe)
        reader = asyncio.create_task(stream.read(requests, _watch_request))
        try:
            async for response in stream.responses():
                yield response
        finally:
            reader.cancel()
            stream.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if stream.error is not None:
            await abort(context, stream.error)


class _FutureRevision(Invalid):
    """A read at a revision the store has not reached (etcd: OUT_OF_RANGE)."""


STATUS.insert(0, (_FutureRevision, grpc.StatusCode.OUT_OF_RANGE))


def _watch_request(request: Any) -> pb.WatchRequest:
    checked: pb.WatchRequest = _checked(request, pb.WatchRequest)
    return checked


def _checked(request: Any, kind: type[Message]) -> Any:
    if isinstance(request, Malformed):
        raise Invalid(f"malformed {kind.DESCRIPTOR.name}: {request.detail}")
    return request


def _plain(request: pb.RangeRequest) -> bool:
    """A Range with nothing but a key and range end (the member's and etcdctl get's)."""
    return not (
        request.revision
        or request.limit
        or request.sort_order
        or request.sort_target
        or request.keys_only
        or request.count_only
        or request.min_mod_revision
        or request.max_mod_revision
        or request.min_create_revision
        or request.max_create_revision
    )


def _filtered(found: list[protocol.Entry], request: pb.RangeRequest) -> list[protocol.Entry]:
    bounds = (
        request.min_mod_revision,
        request.max_mod_revision,
        request.min_create_revision,
        request.max_create_revision,
    )
    if any(bounds):
        low = max(request.min_mod_revision, request.min_create_revision)
        highs = [b for b in (request.max_mod_revision, request.max_create_revision) if b]
        high = min(highs) if highs else None
        found = [e for e in found if e.revision >= low and (high is None or e.revision <= high)]
    order, target = request.sort_order, request.sort_target
    if order == pb.RangeRequest.NONE and target != pb.RangeRequest.KEY:
        order = pb.RangeRequest.ASCEND  # etcd's rule: a sort target without an order ascends
    if order == pb.RangeRequest.NONE:
        return found
    by: dict[int, Callable[[protocol.Entry], Any]] = {
        pb.RangeRequest.KEY: lambda e: e.key,
        pb.RangeRequest.VERSION: lambda e: 1,
        pb.RangeRequest.CREATE: lambda e: e.revision,
        pb.RangeRequest.MOD: lambda e: e.revision,
        pb.RangeRequest.VALUE: lambda e: e.value,
    }
    return sorted(found, key=by[target], reverse=order == pb.RangeRequest.DESCEND)
