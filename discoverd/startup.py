"""Pre-flight of `discoverd serve`: what must hold before anything starts, checked at once.

A second `discoverd serve` on the same machine must say in one line what is in the way, not
start an embedded etcd that waits on the first one's database and then blame it. So, before
the embedded etcd or any listener starts:

- the data dir of an embedded etcd is locked (`flock` on `<data-dir>/.lock`, holding our pid)
  for the life of the process; a second process finds it taken and names the holder;
- the DNS (UDP and TCP) and gRPC addresses are probed with the options their servers bind with,
  so a busy port is reported with its own address;
- the HTTP socket is bound here and handed to aiohttp, so its failure names the HTTP address.

A listener that loses a race after the probe still fails with its own address (`StartupError`
raised where it binds).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from discoverd.config import HostPort

LOCK_NAME = ".lock"


class StartupError(RuntimeError):
    """Something in the way of starting; the message is the one line the operator reads."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on `data_dir`, held until the returned file is closed (or the process
    ends). Raises StartupError if another process holds it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = (data_dir / LOCK_NAME).open("a+")
    except OSError as exc:
        raise StartupError(f"cannot use the data dir {data_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StartupError(
            f"the data dir {data_dir} is in use by another discoverd{who}: stop it, or give "
            "this one its own --data-dir (or --etcd)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _resolve(
    address: HostPort, kind: socket.SocketKind
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    infos = socket.getaddrinfo(address.host, address.port, type=kind, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _bind(address: HostPort, kind: socket.SocketKind, reuse: bool) -> socket.socket:
    family, sockaddr = _resolve(address, kind)
    sock = socket.socket(family, kind)
    try:
        if reuse:  # as asyncio, aiohttp and grpc do for TCP: a TIME_WAIT port is not busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _problem(exc: OSError) -> str:
    return exc.strerror or str(exc)


def bind_http(address: HostPort) -> socket.socket:
    """The HTTP listening socket, bound now (aiohttp serves on it)."""
    try:
        return _bind(address, socket.SOCK_STREAM, reuse=True)
    except OSError as exc:
        raise StartupError(f"cannot listen for HTTP on {address}: {_problem(exc)}") from None


def probe(address: HostPort, what: str, *, udp: bool = False) -> None:
    """Raise StartupError if `address` cannot be bound now (TCP, and UDP too with `udp`).
    Port 0 (pick a free one) always can."""
    if address.port == 0:
        return
    kinds = [(socket.SOCK_STREAM, True)] + ([(socket.SOCK_DGRAM, False)] if udp else [])
    for kind, reuse in kinds:
        try:
            sock = _bind(address, kind, reuse)
        except OSError as exc:
            proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            raise StartupError(
                f"cannot listen for {what} on {address} ({proto}): {_problem(exc)}"
            ) from None
        with contextlib.closing(sock):
            pass
