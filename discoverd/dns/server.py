"""The DNS transports: UDP and TCP listeners on asyncio, both answered by one `Responder`.

UDP answers in `datagram_received` with no await. TCP (RFC 7766) reads length-prefixed
messages in a loop, answers pipelined queries in order with one write each, closes a
connection idle for `TCP_IDLE` seconds, and refuses connections past `TCP_MAX_CONNECTIONS`.
No packet can take the server down: every failure is counted and the packet dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from discoverd.dns.wire import Responder

logger = logging.getLogger(__name__)

TCP_IDLE = 10.0
TCP_MAX_CONNECTIONS = 256
_LENGTH = struct.Struct("!H")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            response = self._responder.respond(data, tcp=False)
        except Exception:  # a bug must cost one packet, never the listener
            self._responder.dropped += 1
            logger.exception("DNS query failed")
            return
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("DNS UDP error: %s", exc)


class DnsServer:
    """UDP and TCP on one address."""

    def __init__(self, responder: Responder, host: str, port: int) -> None:
        self._responder = responder
        self._host = host
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = port

    @property
    def address(self) -> str:
        return f"[{self._host}]:{self.port}" if ":" in self._host else f"{self._host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, self._host, self._port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self._responder), local_addr=(self._host, self.port)
        )
        self._udp = transport

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = _LENGTH.unpack(prefix)
                message = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                try:
                    response = self._responder.respond(message, tcp=True)
                except Exception:
                    logger.exception("DNS query failed")
                    response = None
                if response is None:
                    continue
                writer.write(_LENGTH.pack(len(response)) + response)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
