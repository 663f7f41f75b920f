"""A real `discoverd serve` process under abuse: bad request lines must not put tokens in its
logs, its embedded etcd is restarted when killed, and idle or slow connections cannot exhaust
its connections. Every process is started here and stopped by its pid."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest

from discoverd import listener
from discoverd.store.embedded import EmbeddedEtcd
from discoverd.store.gateway import EtcdGateway, b64
from tests.support import DiscoverdProcess, http, pid_running, wait_until


@pytest.fixture
def server(tmp_path: Path):
    process = DiscoverdProcess(tmp_path, (), "--log-format", "text")
    try:
        yield process.start(timeout=60)
    finally:
        process.stop()


def raw(url: str, payload: bytes, source: str = "127.0.0.1") -> bytes:
    """Send raw bytes on a new connection; what comes back until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    chunks = []
    with socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0)) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):  # refused before it was all sent
            pass
    return b"".join(chunks)


def etcd_child(server: DiscoverdProcess) -> int | None:
    """The pid of the embedded etcd that discoverd runs."""
    assert server.process is not None
    parent = server.process.pid
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "etcd":
                    return int(child)
            except OSError:
                continue
    return None


# -- F: tokens never reach a log ------------------------------------------------------------


def test_bad_requests_and_etcd_failures_leave_no_token_in_any_log(server):
    token = server.new().rsplit("/", 1)[1]
    bad = [
        b"GET /" + token.encode() + b"/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + token.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /" + token.encode() + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + token.encode() + b"/_config/size HTTP/1.1\nHost: x\n\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nX-Token: " + token.encode() + b"\x00\r\n\r\n",
    ]
    for payload in bad:
        answer = raw(server.url, payload)
        # Nothing (reset while the request was still being sent) or an HTTP answer: aiohttp
        # answers a request line it could not read with HTTP/1.0, whichever comes first.
        assert answer == b"" or answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
    # etcd itself refusing a request about the token (its lease is gone: the token expired
    # between discoverd's read and its write) logs the request, keys and all, at warn level.
    endpoint = (server.data_dir / "etcd.endpoint").read_text().strip()
    gateway = EtcdGateway([endpoint], timeout=2)
    try:
        client = gateway.new_client(0)
        key = b64(f"/discoverd/v1/clusters/{token}/v2/1")
        put = {"request_put": {"key": key, "value": b64("x"), "lease": 424242}}
        with pytest.raises(Exception, match="Not Found"):
            client.transaction({"compare": [], "success": [put], "failure": []})
    finally:
        gateway.close()
    assert http("GET", server.url + "/health")[0] == 200  # every refusal logged by now
    logs = server.log_path.read_text(errors="replace")
    assert "Error handling request" in logs or "Bad" in logs, logs[-2000:]
    assert token not in logs, [line for line in logs.splitlines() if token in line][:3]
    etcd_log = (server.data_dir / "etcd.log").read_text(errors="replace")
    assert token not in etcd_log, [line for line in etcd_log.splitlines() if token in line][:3]


# -- E: the embedded etcd is supervised -----------------------------------------------------


def test_a_killed_embedded_etcd_is_restarted(server):
    url = server.new()
    first = etcd_child(server)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not pid_running(first), 10, "the killed etcd to be gone")

    def back() -> bool:
        pid = etcd_child(server)
        return pid not in (None, first) and server.healthy()

    wait_until(back, 60, f"discoverd to restart its etcd ({server.log()})")
    assert http("GET", url + "/_config/size")[0] == 200  # the data survived the restart
    assert http("POST", server.url + "/new")[0] == 200
    assert "embedded etcd died" in server.log_path.read_text()


# -- G: connections cannot be exhausted -----------------------------------------------------


def test_one_address_cannot_hold_every_connection(server):
    """300 idle connections from 127.0.0.2: the first PER_ADDRESS stay, the rest get a 503
    and are closed at once, and clients from other addresses are served meanwhile."""
    count = listener.PER_ADDRESS + 44
    host, port = "127.0.0.1", server.port
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(
                socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
            )
        refused = read_refusals(held, count - listener.PER_ADDRESS)
        assert len(refused) == count - listener.PER_ADDRESS
        other = HTTPConnection(host, port, timeout=10, source_address=("127.0.0.3", 0))
        other.request("GET", "/health")
        assert other.getresponse().status == 200
        other.close()
    finally:
        for sock in held:
            sock.close()

    def served_again() -> bool:
        conn = HTTPConnection(host, port, timeout=10, source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    wait_until(served_again, 15, "the address to be served again once its connections closed")


def read_refusals(sockets: list[socket.socket], expected: int) -> set[int]:
    """The sockets (by fd) that got discoverd's 503, read until `expected` did or 30 s."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    refused: set[int] = set()
    deadline = time.monotonic() + 30
    while len(refused) < expected and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            poller.unregister(fd)
            data = by_fd[fd].recv(4096)
            if data.startswith(b"HTTP/1.1 503"):
                assert b"too many connections" in data
                refused.add(fd)
    return refused


def test_a_slowloris_connection_is_closed_within_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        opened = time.monotonic()
        closed = False
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.2)
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: closed as well
                closed = True
                break
            assert time.monotonic() - opened < listener.HEADER_TIMEOUT + 10
        assert closed, "a slowloris connection was never closed"
        assert time.monotonic() - opened >= listener.HEADER_TIMEOUT - 1


def test_a_long_poll_is_not_cut_by_the_connection_timeouts(tmp_path):
    """A waiting GET is idle after its head for up to --wait-timeout: it must end as an empty
    200 (etcd's keepalive), not be cut by the header or keep-alive timeout."""
    wait = max(listener.HEADER_TIMEOUT, listener.KEEPALIVE_TIMEOUT) + 2
    server = DiscoverdProcess(tmp_path, (), "--wait-timeout", f"{wait}s")
    try:
        url = server.start(timeout=60).new()
        started = time.monotonic()
        status, _, body = http("GET", url + "?wait=true&recursive=true", timeout=wait + 20)
        assert (status, body) == (200, b"")
        assert time.monotonic() - started >= wait - 1
    finally:
        server.stop()


async def test_supervision_gives_up_on_an_etcd_that_keeps_dying(tmp_path):
    from discoverd.store.embedded import EmbeddedEtcdError, supervise

    dying = tmp_path / "etcd"
    dying.write_text("#!/bin/sh\nexit 3\n")
    dying.chmod(0o755)
    etcd = EmbeddedEtcd(tmp_path / "data", binary=dying)
    etcd.launch()
    try:
        with pytest.raises(EmbeddedEtcdError, match="after 2 restarts"):
            await supervise(etcd, limit=2, backoff=0.01, interval=0.01)
    finally:
        etcd.stop()
    assert (tmp_path / "data" / "etcd.log").exists()
