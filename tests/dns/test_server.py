"""The DNS responder on the wire, inside the real app on a real etcd: dig and dnspython over
UDP and TCP, live updates from registrations, pipelining, and packets that must not hurt it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from discoverd import appkeys
from discoverd.app import build_app
from discoverd.directory.rules import cluster_label as label
from discoverd.dns import server as server_module

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def dns_port(client) -> int:
    return client.server.app[appkeys.DNS_SERVER].port


async def new_cluster(client, members: int = 3) -> str:
    token = (await (await client.post("/new?size=3")).text()).rsplit("/", 1)[1]
    for i in range(members):
        await client.put(
            f"/{token}/{i + 1:x}", data=f"value=infra{i}=http://10.0.0.{i + 1}:2380", headers=FORM
        )
    return token


async def udp(port: int, name: str, rdtype: str, **kwargs) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)


async def test_v2_registrations_are_srv_records_at_once(client, dns_port):
    token = await new_cluster(client, members=0)
    name = f"_etcd-server._tcp.{label(token)}.etcd.internal"
    assert (await udp(dns_port, name, "SRV")).rcode() == dns.rcode.NXDOMAIN
    await client.put(f"/{token}/1", data="value=infra0=http://10.0.0.1:2380", headers=FORM)
    started = time.monotonic()
    reply = await udp(dns_port, name, "SRV")
    assert time.monotonic() - started < 1
    assert [rr.to_text() for rr in reply.answer[0]] == [
        f"0 100 2380 infra0.{label(token)}.etcd.internal."
    ]
    a = await udp(dns_port, f"infra0.{label(token)}.etcd.internal", "A")
    assert [rr.to_text() for rr in a.answer[0]] == ["10.0.0.1"]


async def test_the_token_is_never_a_dns_name(client, dns_port):
    """#9: `--discovery-srv <token>.<zone>` sent the bearer secret to every resolver on the
    way. A cluster is published under its label, a one-way hash of the token."""
    token = await new_cluster(client, members=1)
    domain = f"{label(token)}.etcd.internal"
    assert label(token).startswith("c-") and token not in domain
    srv = await udp(dns_port, f"_etcd-server._tcp.{domain}", "SRV")
    assert [rr.to_text() for rr in srv.answer[0]] == [f"0 100 2380 infra0.{domain}."]
    for name in (f"_etcd-server._tcp.{token}.etcd.internal", f"infra0.{token}.etcd.internal"):
        assert (await udp(dns_port, name, "SRV")).rcode() == dns.rcode.NXDOMAIN
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert view["dns"]["domains"] == [domain]
    assert token not in str(view["dns"])


async def test_member_api_publishes_client_srv(client, dns_port):
    token = await new_cluster(client, members=0)
    body = {"peer_urls": ["https://10.0.0.7:2380"], "client_urls": ["https://10.0.0.7:2379"]}
    await client.put(f"/api/v1/clusters/{token}/members/infra7", json=body)
    reply = await udp(dns_port, f"_etcd-client-ssl._tcp.{label(token)}.etcd.internal", "SRV")
    assert [rr.port for rr in reply.answer[0]] == [2379]


async def test_tcp_answers_pipelined_queries_in_order(client, dns_port):
    token = await new_cluster(client)
    names = [f"infra{i}.{label(token)}.etcd.internal" for i in range(3)]
    queries = [dns.message.make_query(name, "A") for name in names]
    reader, writer = await asyncio.open_connection("127.0.0.1", dns_port)
    writer.write(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
    await writer.drain()
    for query in queries:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = dns.message.from_wire(await reader.readexactly(length))
        assert reply.id == query.id
        assert reply.answer[0].name == query.question[0].name
    writer.close()


async def test_dig_sees_an_authoritative_answer(client, dns_port):
    dig = shutil.which("dig")
    if dig is None:
        pytest.skip(
            "LOUD: dig (Debian bind9-dnsutils) is not installed; `make test` installs it as root"
        )
    token = await new_cluster(client)
    for transport in ("+notcp", "+tcp"):
        out = await asyncio.to_thread(
            subprocess.run,
            [
                dig,
                "-p",
                str(dns_port),
                "@127.0.0.1",
                transport,
                "+norecurse",
                f"_etcd-server._tcp.{label(token)}.etcd.internal",
                "SRV",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert "status: NOERROR" in out.stdout
        assert "flags: qr aa;" in out.stdout  # authoritative, no RA, no AD
        assert "ANSWER: 3" in out.stdout and "ADDITIONAL: 4" in out.stdout  # 3 glue + OPT


async def test_garbage_never_stops_the_server(client, dns_port):
    token = await new_cluster(client)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for payload in (
        b"",
        b"\x00",
        b"\xff" * 12,
        b"\x00\x01\x01\x00\x00\x01" + b"\x00" * 6 + b"\xc0\x0c",
        bytes(range(256)) * 4,
    ):
        sock.sendto(payload, ("127.0.0.1", dns_port))
    sock.close()
    _reader, writer = await asyncio.open_connection("127.0.0.1", dns_port)
    writer.write(b"\x00\x05hello")  # a short, malformed TCP message
    await writer.drain()
    writer.close()
    reply = await udp(dns_port, f"_etcd-server._tcp.{label(token)}.etcd.internal", "SRV")
    assert len(reply.answer[0]) == 3


async def test_expired_token_leaves_dns(client, dns_port):
    token = await new_cluster(client, members=1)
    registry = client.server.app[appkeys.REGISTRY]
    cluster = registry.cluster(token)
    gateway = client.server.app[appkeys.GATEWAY]
    await gateway.call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": cluster.lease}))
    deadline = time.monotonic() + 5
    while (await udp(dns_port, f"{label(token)}.etcd.internal", "A")).rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_dns_counters_are_exported(client, dns_port):
    token = await new_cluster(client)
    await udp(dns_port, f"_etcd-server._tcp.{label(token)}.etcd.internal", "SRV")
    await udp(dns_port, "example.com", "A")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"\x00", ("127.0.0.1", dns_port))  # too short to answer: dropped
    sock.close()
    deadline = time.monotonic() + 5
    while True:
        text = await (await client.get("/metrics")).text()
        if "discoverd_dns_dropped_total 1.0" in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert 'discoverd_dns_responses_total{rcode="NOERROR"}' in text
    assert 'discoverd_dns_responses_total{rcode="REFUSED"} 1.0' in text
    assert "discoverd_dns_dropped_total 1.0" in text


# -- TCP: no client holds the listener ---------------------------------------------------------


async def busy_cluster(client, members: int) -> str:
    """A cluster whose SRV answer over TCP is large (members x 4 SRV records)."""
    token = (await (await client.post("/new?size=99")).text()).rsplit("/", 1)[1]
    for i in range(members):
        body = {"peer_urls": [f"http://10.1.{i}.1:{2380 + j}" for j in range(4)]}
        response = await client.put(f"/api/v1/clusters/{token}/members/m{i}", json=body)
        assert response.status in (200, 201), await response.text()
    return token


async def never_reading(host: str, port: int, source: str, queries: bytes) -> socket.socket:
    """A TCP client that pipelines `queries` and never reads a reply (a tiny receive window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, queries)
    return sock


def pipelined(name: str, count: int) -> bytes:
    wire = dns.message.make_query(name, "SRV").to_wire()
    return (struct.pack("!H", len(wire)) + wire) * count


async def eventually(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (replies it never read are read and dropped)."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    return True


async def test_clients_that_never_read_cannot_block_tcp(client, dns_port, monkeypatch):
    monkeypatch.setattr(server_module, "TCP_MAX_CONNECTIONS", 32)  # 256 in production
    server = client.server.app[appkeys.DNS_SERVER]
    token = await busy_cluster(client, 40)  # a 12 KB answer, asked 40 times per connection
    flood = pipelined(f"_etcd-server._tcp.{label(token)}.etcd.internal", 40)
    hogs = []
    try:
        for source in range(3):  # 48 connections: past the cap, 16 from each source
            for _ in range(16):
                hogs.append(
                    await never_reading("127.0.0.1", dns_port, f"127.0.0.{source + 2}", flood)
                )
        await eventually(lambda: server.tcp_connections >= 32, 10, "the hogs to fill the cap")
        started = time.monotonic()
        query = dns.message.make_query(f"_etcd-server._tcp.{label(token)}.etcd.internal", "SRV")
        reply = await dns.asyncquery.tcp(query, "127.0.0.1", port=dns_port, timeout=3)
        assert time.monotonic() - started < 2
        assert len(reply.answer[0]) == 160
        assert server.tcp_closed.get("evicted", 0) >= 1
    finally:
        for sock in hogs:
            sock.close()


async def test_a_reply_nobody_reads_times_out(client, dns_port, monkeypatch):
    monkeypatch.setattr(server_module, "TCP_WRITE_TIMEOUT", 0.5)
    server = client.server.app[appkeys.DNS_SERVER]
    token = await busy_cluster(client, 40)
    # 6 MB of replies each: more than the kernel buffers (4 MB at most) and asyncio's take
    flood = pipelined(f"_etcd-server._tcp.{label(token)}.etcd.internal", 600)
    hogs = [await never_reading("127.0.0.1", dns_port, "127.0.0.20", flood) for _ in range(4)]
    try:
        await eventually(lambda: server.tcp_closed.get("write_timeout", 0) == 4, 10, "timeouts")
        await eventually(lambda: server.tcp_connections == 0, 5, "the hogs to be dropped")
        await eventually(lambda: all(closed_by_peer(sock) for sock in hogs), 5, "aborts")
    finally:
        for sock in hogs:
            sock.close()


async def test_one_source_may_hold_few_connections(client, dns_port):
    server = client.server.app[appkeys.DNS_SERVER]
    loop = asyncio.get_running_loop()
    held = []
    try:
        for _ in range(server_module.TCP_PER_SOURCE + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind(("127.0.0.30", 0))
            await loop.sock_connect(sock, ("127.0.0.1", dns_port))
            held.append(sock)
        await eventually(lambda: closed_by_peer(held[-1]), 5, "the extra connection to close")
        assert server.tcp_closed.get("source_limit") == 1
        assert not any(closed_by_peer(sock) for sock in held[:-1])
        token = await new_cluster(client)  # another source is served
        query = dns.message.make_query(f"_etcd-server._tcp.{label(token)}.etcd.internal", "SRV")
        reply = await dns.asyncquery.tcp(query, "127.0.0.1", port=dns_port, timeout=3)
        assert len(reply.answer[0]) == 3
    finally:
        for sock in held:
            sock.close()


async def test_idle_connections_are_closed(client, dns_port, monkeypatch):
    monkeypatch.setattr(server_module, "TCP_IDLE", 0.3)
    _reader, writer = await asyncio.open_connection("127.0.0.1", dns_port)
    writer.write(b"\x00")  # half a length prefix, then nothing
    await writer.drain()
    assert await asyncio.wait_for(_reader.read(), 5) == b""
    writer.close()


# -- UDP: a per-source response rate limit -----------------------------------------------------


@pytest.fixture
async def limited(aiohttp_client, settings):
    app = build_app(settings.model_copy(update={"dns_rate": 5.0}))  # bursts of 10
    return await aiohttp_client(app)


def burst_from_one_network(port: int, query: bytes, count: int) -> tuple[list[bytes], bytes]:
    """Send `count` queries from 127.0.0.1, then one from another /24; once that is answered,
    every reply to the burst has arrived. The burst's replies, and the other one."""
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.1.1", 0))
    other.settimeout(5)
    try:
        for _ in range(count):
            flood.sendto(query, ("127.0.0.1", port))
        other.sendto(query, ("127.0.0.1", port))
        answer = other.recv(65536)
        flood.setblocking(False)
        replies = []
        while True:
            try:
                replies.append(flood.recv(65536))
            except BlockingIOError:
                return replies, answer
    finally:
        flood.close()
        other.close()


async def test_udp_responses_are_rate_limited_per_network(limited):
    port = limited.server.app[appkeys.DNS_SERVER].port
    token = await new_cluster(limited)
    query = dns.message.make_query(
        f"_etcd-server._tcp.{label(token)}.etcd.internal", "SRV"
    ).to_wire()
    started = time.monotonic()
    replies, other = await asyncio.to_thread(burst_from_one_network, port, query, 100)
    took = time.monotonic() - started
    parsed = [dns.message.from_wire(raw) for raw in replies]
    full = [m for m in parsed if not m.flags & dns.flags.TC]
    slipped = [raw for raw in replies if dns.message.from_wire(raw).flags & dns.flags.TC]
    assert 10 <= len(full) <= 10 + 5 * took + 1  # the burst, and what refilled meanwhile
    assert all(len(m.answer[0]) == 3 for m in full)
    limited_count = 100 - len(full)
    assert abs(len(slipped) - limited_count / 2) <= 1  # every second one slips, the rest drop
    assert all(len(raw) <= len(query) for raw in slipped)  # no amplification
    assert len(dns.message.from_wire(other).answer[0]) == 3  # another network is not limited
    text = await (await limited.get("/metrics")).text()
    assert f'discoverd_dns_rate_limited_total{{action="slip"}} {len(slipped)}.0' in text
    assert (
        f'discoverd_dns_rate_limited_total{{action="drop"}} {limited_count - len(slipped)}.0'
        in text
    )
