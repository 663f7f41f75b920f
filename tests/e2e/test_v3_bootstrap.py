"""Stock etcd 3.6 / 3.7 members bootstrap through discoverd's v3 face (`--discovery-token`,
`--discovery-endpoints` on its gRPC port): the happy paths, and what the other faces show of a
v3 registration (the cluster API, DNS SRV and A)."""

from __future__ import annotations

import re

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.e2e.conftest import (
    V3_ETCD_BINARIES,
    Members,
    StartDiscoverd,
    V3Discovery,
    etcd_3_7,
    metric,
    wait_for,
)
from tests.e2e.v3support import (
    DiscoverdDiscovery,
    assert_v3_cluster,
    bootstrap,
    member_key,
    registration,
)
from tests.support import DiscoverdProcess

pytestmark = pytest.mark.e2e

NAMES_3 = ("m1", "m2", "m3")
NAMES_5 = ("m1", "m2", "m3", "m4", "m5")
DNS_TIMEOUT = 10.0


def _dns(server: DiscoverdProcess, name: str, rdtype: str) -> list[str]:
    """The answer records of one UDP query to discoverd's DNS responder, as text."""
    query = dns.message.make_query(name, rdtype)
    reply = dns.query.udp(query, "127.0.0.1", port=server.dns_port, timeout=2)
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(rr.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rr in rrset)


@pytest.mark.parametrize("binary_name", list(V3_ETCD_BINARIES))
def test_three_members_bootstrap_and_show_in_the_api_and_dns(
    binary_name: str, module_discoverd: DiscoverdProcess, members: Members
) -> None:
    binary = V3_ETCD_BINARIES[binary_name]()
    service = DiscoverdDiscovery(module_discoverd)
    discovery = service.new(size=3)
    token = discovery.token

    group, _ = bootstrap(members, discovery, NAMES_3, binary)

    # KV/Range through the face: one key per member ID etcd derived, its `name=peerURL`.
    assert service.registered(token) == {member_key(token, m): registration(m) for m in group}
    # The cluster API shows the v3 registrations like v2 ones, and the v3 flags.
    view = service.view(token)
    assert (view["size"], view["registered"], view["complete"]) == (3, 3, True)
    assert sorted((m["name"], m["peer_urls"]) for m in view["members"]) == [
        (m.name, [m.peer_url]) for m in group
    ]
    assert (
        f"--discovery-endpoints={module_discoverd.grpc_endpoint}" in view["discovery_v3"]["flags"]
    )
    # DNS: SRV per peer URL, target <name>.<domain> with the A of the member's address; the
    # domain is the cluster's label (c- and 16 hex), never the token (a bearer secret).
    domain = view["dns"]["domains"][0]
    assert re.fullmatch(r"c-[0-9a-f]{16}\.etcd\.internal", domain), domain
    expected_srv = sorted(f"0 100 {m.peer_port} {m.name}.{domain}." for m in group)
    srv_name = f"_etcd-server._tcp.{domain}"
    wait_for(
        lambda: _dns(module_discoverd, srv_name, "SRV") == expected_srv,
        DNS_TIMEOUT,
        f"SRV {srv_name}",
        lambda: str(_dns(module_discoverd, srv_name, "SRV")),
    )
    for member in group:
        assert _dns(module_discoverd, f"{member.name}.{domain}", "A") == [member.host]


def test_five_members_bootstrap(module_discoverd: DiscoverdProcess, members: Members) -> None:
    service = DiscoverdDiscovery(module_discoverd)
    discovery = service.new(size=5)

    bootstrap(members, discovery, NAMES_5, etcd_3_7())

    assert len(service.registered(discovery.token)) == 5
    assert service.view(discovery.token)["registered"] == 5


def test_members_given_different_replicas_form_one_cluster(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """Two discoverd replicas on one backing etcd. Unlike v2 (where the discovery URL names the
    replica and goes into the cluster ID), a v3 member's ID hashes only its peer URLs and the
    token: members listing different replicas, in different orders, are one cluster."""
    replica_a = start_discoverd([etcd_endpoint])
    replica_b = start_discoverd([etcd_endpoint])
    token = DiscoverdDiscovery(replica_a).new(size=3).token
    a, b = replica_a.grpc_endpoint, replica_b.grpc_endpoint
    binary = etcd_3_7()

    group = [
        members.add(name, V3Discovery(token, endpoints), binary).start()
        for name, endpoints in (("m1", (a,)), ("m2", (b, a)), ("m3", (a, b)))
    ]

    assert_v3_cluster(group)
    # Every registration went through one replica or the other, m1's through A (its only one).
    puts = [
        metric(replica, "discoverd_grpc_requests_total", method="Put", code="OK")
        for replica in (replica_a, replica_b)
    ]
    assert sum(puts) == 3 and puts[0] >= 1, puts
