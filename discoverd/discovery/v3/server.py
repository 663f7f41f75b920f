"""The gRPC listener of the v3 discovery face (`--grpc-listen`), on the app's event loop.

Only the etcd v3 discovery subset is routed (`etcdserverpb.KV/Range`, `KV/Put`, `Watch/Watch`,
`Auth/Authenticate`); every other method of etcd's API gets a status that says why it is not
served: PERMISSION_DENIED for the writes discovery never allows (DeleteRange, Txn, Compact),
UNIMPLEMENTED for the rest.

Channel settings that the stock members need: clientv3 pings every 10 s even on an idle watch,
so the server must accept pings without data that often (else grpc-core answers GOAWAY
"too_many_pings"); with TLS, grpc-core offers ALPN h2, which grpc-go >= 1.67 requires.
SO_REUSEPORT is off, so a second discoverd on the same port fails loudly instead of sharing it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from discoverd.discovery.v3 import render
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.discovery.v3.service import DiscoveryV3, parser

logger = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024  # a discovery request is a few hundred bytes
MAX_STREAMS_PER_CONNECTION = 10_000  # one connection may carry many waiting members (a proxy)
OPTIONS: list[tuple[str, Any]] = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),  # never GOAWAY a client for pinging
    ("grpc.keepalive_time_ms", 30_000),  # find clients that vanished without a FIN
    ("grpc.keepalive_timeout_ms", 10_000),
    # Calls that arrived but wait for the server loop to pick them up: grpc-core's default (1000)
    # answers INTERNAL to the rest of a burst, e.g. the 2,000th member watch opened at once.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
]

REFUSED_WRITES = frozenset({"DeleteRange", "Txn", "Compact"})
SERVED = "KV/Range, KV/Put, Watch/Watch and Auth/Authenticate"


class BindError(OSError):
    """The gRPC listener could not bind its address."""


def _handlers(service: DiscoveryV3) -> list[grpc.GenericRpcHandler]:
    def unary(handler: Any, request: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=parser(request), response_serializer=render.serialize
        )

    kv = grpc.method_handlers_generic_handler(
        "etcdserverpb.KV",
        {
            "Range": unary(service.range, pb.RangeRequest),
            "Put": unary(service.put, pb.PutRequest),
        },
    )
    watch = grpc.method_handlers_generic_handler(
        "etcdserverpb.Watch",
        {
            "Watch": grpc.stream_stream_rpc_method_handler(
                service.watch,
                request_deserializer=parser(pb.WatchRequest),
                response_serializer=render.serialize,
            )
        },
    )
    auth = grpc.method_handlers_generic_handler(
        "etcdserverpb.Auth",
        {"Authenticate": unary(service.authenticate, pb.AuthenticateRequest)},
    )
    return [kv, watch, auth, _Refusals()]


def refusal(method: str) -> tuple[grpc.StatusCode, str]:
    """The status for a method outside the subset: `method` is `/package.Service/Name`."""
    service, _, name = method.lstrip("/").partition("/")
    if service == "etcdserverpb.KV" and name in REFUSED_WRITES:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"discovery registrations are create-only: KV/{name} is refused",
        )
    short = f"{service.removeprefix('etcdserverpb.')}/{name}" if name else method[:80]
    return (
        grpc.StatusCode.UNIMPLEMENTED,
        f"discoverd serves only the etcd v3 discovery subset ({SERVED}); {short} is not part of it",
    )


class _Refusals(grpc.GenericRpcHandler):
    """Every method not routed above: answered at once with a status that says why."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        code, message = refusal(handler_call_details.method)

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(code, message)

        return grpc.stream_stream_rpc_method_handler(refuse)  # raw bytes in, nothing out


def tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server credentials from PEM files (read once, at start)."""
    try:
        return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    except OSError as exc:
        raise BindError(f"cannot read the gRPC TLS certificate or key: {exc}") from None


async def start(
    service: DiscoveryV3,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started server and the port it listens on (port 0 picks a free one); TLS with
    `credentials`, plaintext without."""
    server = grpc.aio.server(options=OPTIONS)
    for handler in _handlers(service):
        server.add_generic_rpc_handlers((handler,))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises this when it cannot bind
        raise BindError(f"cannot listen for gRPC on {address}: {exc}") from None
    if not bound:
        raise BindError(f"cannot listen for gRPC on {address}: the address is in use or invalid")
    await server.start()
    return server, bound
