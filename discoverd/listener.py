"""The HTTP listener of `discoverd serve`, guarded against connection exhaustion, and the stop of
the process (a signal, or a fatal failure such as an embedded etcd that keeps dying).

Every connection passes a guard before aiohttp sees it:

- **caps**: at most PER_ADDRESS connections from one client address (IPv6: its /64; trusted
  proxies are exempt), and at most a total kept below the file-descriptor limit, which is raised
  from soft to hard at start. A connection past a cap gets a 503 and is closed, so accepting never
  fails for lack of descriptors and etcd, DNS and the logs keep theirs.
- **header timeout**: a new connection must send a whole request head within HEADER_TIMEOUT
  (an idle or slowloris connection is closed). From then on aiohttp's keep-alive timeout closes
  a connection idle between requests; a request being handled (a v2 long-poll waits up to
  --wait-timeout after its head) is never cut.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from aiohttp import web

from discoverd.discovery.v2 import protocol
from discoverd.ratelimit import client_key

logger = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0  # a new connection's first request head must arrive within this
KEEPALIVE_TIMEOUT = 30.0  # an idle connection between requests is closed after this
PER_ADDRESS = 256  # connections from one client address (IPv6: /64)
FD_RESERVE = 512  # descriptors kept for etcd, DNS, logs and the embedded etcd
TOTAL_MAX = 50_000  # connections in all, whatever the descriptor limit
SHUTDOWN_TIMEOUT = 5.0
REFUSAL_LOG_EVERY = 10.0  # at most one log line per this many seconds about refusals


class Shutdown:
    """The stop of the process: `request(0)` on SIGTERM/SIGINT, `request(1)` on a fatal failure."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self._event = asyncio.Event()

    def request(self, status: int = 0, reason: str = "") -> None:
        if status > self.status:
            self.status, self.reason = status, reason
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def total_cap(fd_limit: int) -> int:
    """Connections in all: below the descriptor limit by FD_RESERVE, at most TOTAL_MAX."""
    return max(64, min(TOTAL_MAX, fd_limit - FD_RESERVE))


class ConnectionGuard:
    """Counts open connections per client address and in all; says which may stay."""

    def __init__(self, per_address: int, total: int, trusted: Sequence[str] = ()) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        self._trusted = tuple(ipaddress.ip_network(net) for net in trusted)
        self._counts: dict[str, int] = {}
        self._refused = 0
        self._logged = 0.0

    def admit(self, address: str | None) -> tuple[str | None, str]:
        """(the key to release later, "") for an admitted connection; (None, why) if refused."""
        if self.open >= self.total:
            return None, self._refuse(f"{self.total} connections are open")
        key = None if self._is_trusted(address) else client_key(address)
        if key is not None:
            count = self._counts.get(key, 0)
            if count >= self.per_address:
                return None, self._refuse(f"{count} connections are open from this address")
            self._counts[key] = count + 1
        self.open += 1
        return key, ""

    def release(self, key: str | None) -> None:
        self.open -= 1
        if key is None:
            return
        count = self._counts.pop(key, 1) - 1
        if count > 0:
            self._counts[key] = count

    def _is_trusted(self, address: str | None) -> bool:
        if not self._trusted or address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def _refuse(self, why: str) -> str:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged >= REFUSAL_LOG_EVERY:
            logger.warning("refusing connections: %s (%d refused so far)", why, self._refused)
            self._logged = now
        return why


class GuardedProtocol(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the caps on entry, the header timeout."""

    def __init__(
        self, make_inner: Callable[[], Any], guard: ConnectionGuard, header_timeout: float
    ) -> None:
        self._make_inner = make_inner
        self._inner: Any = None
        self._guard = guard
        self._header_timeout = header_timeout
        self._admitted = False
        self._key: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are Transports, not subclasses
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        key, why = self._guard.admit(address)
        if why:
            body = protocol.render_error(protocol.RAFT_INTERNAL, f"too many connections: {why}",
                                         "", 0)  # fmt: skip
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            transport.close()
            return
        self._admitted, self._key, self._transport = True, key, transport
        self._inner = self._make_inner()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._header_timeout, self._head_timed_out)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is not None:
            seen = self._tail + data
            if b"\n\n" in seen or b"\n\r\n" in seen:  # the end of a head, CRLF or LF
                self._timer.cancel()  # the head is in: aiohttp's timeouts govern from here
                self._timer = None
            else:
                self._tail = seen[-2:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.release(self._key)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._transport is not None and self._admitted:
            logger.debug("closing a connection that sent no request head in %.0fs",
                         self._header_timeout)  # fmt: skip
            self._transport.abort()


def run(
    app: web.Application,
    sock: socket.socket,
    shutdown: Shutdown,
    *,
    loop: asyncio.AbstractEventLoop,
    ready: Callable[[], None],
    trusted: Sequence[str] = (),
    **runner_options: Any,
) -> int:
    """Serve `app` on the bound, listening `sock` until `shutdown` is requested; the exit
    status. What aiohttp's run_app does, with the guard between the socket and aiohttp."""
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.request)
    guard = ConnectionGuard(PER_ADDRESS, total_cap(raise_fd_limit()), trusted)
    main = loop.create_task(
        _serve(app, sock, shutdown, guard=guard, ready=ready, runner_options=runner_options)
    )
    try:
        loop.run_until_complete(main)
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        pending = asyncio.all_tasks(loop)
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if shutdown.status:
        logger.error("discoverd stopped: %s", shutdown.reason)
    return shutdown.status


async def _serve(
    app: web.Application,
    sock: socket.socket,
    shutdown: Shutdown,
    *,
    guard: ConnectionGuard,
    ready: Callable[[], None],
    runner_options: dict[str, Any],
) -> None:
    runner = web.AppRunner(
        app,
        handle_signals=False,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        **runner_options,
    )
    await runner.setup()
    server: asyncio.Server | None = None
    try:
        handler = runner.server
        assert handler is not None
        server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(handler, guard, HEADER_TIMEOUT), sock=sock, backlog=1024
        )
        ready()
        await shutdown.wait()
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()
