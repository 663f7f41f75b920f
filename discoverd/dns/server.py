"""The DNS transports: UDP and TCP listeners on asyncio, both answered by one `Responder`.

UDP answers in `datagram_received` with no await, after the per-source rate limit (`rrl`).
TCP (RFC 7766) reads length-prefixed messages in a loop and answers pipelined queries in
order. No client can hold the listener: a connection is closed when no complete query arrives
for `TCP_IDLE` seconds, or when a reply waits more than `TCP_WRITE_TIMEOUT` seconds for the
client to read it (the connection is aborted: a peer that never reads cannot hold it open
either). One source address (IPv6: its /64) may hold `TCP_PER_SOURCE` connections, and more
are refused at once; at `TCP_MAX_CONNECTIONS`, a new connection closes the least recently
active one (RFC 7766 6.2.3), so a fresh client is always served.
No packet can take the server down: every failure is counted and the packet dropped.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from typing import Any

from discoverd.dns.rrl import SourceLimiter, Verdict
from discoverd.dns.wire import Responder
from discoverd.ratelimit import client_key

logger = logging.getLogger(__name__)

TCP_IDLE = 10.0
TCP_WRITE_TIMEOUT = 5.0
TCP_MAX_CONNECTIONS = 256
TCP_PER_SOURCE = 16
_LENGTH = struct.Struct("!H")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder, limiter: SourceLimiter) -> None:
        self._responder = responder
        self._limiter = limiter
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        verdict = self._limiter.check(str(addr[0]))
        if verdict is Verdict.DROP:
            return
        try:
            if verdict is Verdict.SLIP:
                response = self._responder.truncated(data)
            else:
                response = self._responder.respond(data, tcp=False)
        except Exception:  # a bug must cost one packet, never the listener
            self._responder.dropped += 1
            logger.exception("DNS query failed")
            return
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("DNS UDP error: %s", exc)


@dataclass(eq=False)
class _Connection:
    source: str
    transport: asyncio.WriteTransport
    task: asyncio.Task[Any]
    active: float  # loop time of its last query or reply


class DnsServer:
    """UDP and TCP on one address."""

    def __init__(
        self, responder: Responder, host: str, port: int, limiter: SourceLimiter | None = None
    ) -> None:
        self._responder = responder
        self._limiter = limiter or SourceLimiter(0)
        self._host = host
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: dict[_Connection, None] = {}
        self._per_source: dict[str, int] = {}
        self.tcp_closed: dict[str, int] = {}  # reason -> connections closed by the server
        self.port = port

    @property
    def address(self) -> str:
        return f"[{self._host}]:{self.port}" if ":" in self._host else f"{self._host}:{self.port}"

    @property
    def tcp_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, self._host, self._port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self._responder, self._limiter), local_addr=(self._host, self.port)
        )
        self._udp = transport

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = [connection.task for connection in self._connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        peer = writer.get_extra_info("peername")
        source = client_key(str(peer[0]) if peer else None)
        if self._per_source.get(source, 0) >= TCP_PER_SOURCE:
            self._count("source_limit")
            transport.abort()
            return
        if len(self._connections) >= TCP_MAX_CONNECTIONS:
            self._evict()
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        connection = _Connection(source, transport, task, loop.time())
        self._connections[connection] = None
        self._per_source[source] = self._per_source.get(source, 0) + 1
        try:
            await self._answer(connection, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._forget(connection)
            if transport.get_write_buffer_size():
                transport.abort()  # a reply it never read: closing would wait for it forever
            else:
                writer.close()

    async def _answer(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(TCP_IDLE):  # the whole next message, not each read
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    message = await reader.readexactly(length)
            except TimeoutError:
                self._count("idle")
                return
            connection.active = loop.time()
            try:
                response = self._responder.respond(message, tcp=True)
            except Exception:
                logger.exception("DNS query failed")
                response = None
            if response is None:
                continue
            writer.write(_LENGTH.pack(len(response)) + response)
            try:
                async with asyncio.timeout(TCP_WRITE_TIMEOUT):
                    await writer.drain()
            except TimeoutError:
                self._count("write_timeout")
                return
            connection.active = loop.time()

    def _evict(self) -> None:
        """Close the least recently active connection to make room for a new one."""
        victim = min(self._connections, key=lambda connection: connection.active)
        self._forget(victim)
        self._count("evicted")
        victim.transport.abort()
        victim.task.cancel()

    def _forget(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return  # evicted before its task ended
        del self._connections[connection]
        left = self._per_source[connection.source] - 1
        if left:
            self._per_source[connection.source] = left
        else:
            del self._per_source[connection.source]

    def _count(self, reason: str) -> None:
        self.tcp_closed[reason] = self.tcp_closed.get(reason, 0) + 1
