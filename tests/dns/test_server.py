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
import dns.message
import dns.query
import dns.rcode
import pytest

from discoverd import appkeys
from discoverd.directory.rules import cluster_label as label

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
