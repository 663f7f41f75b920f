"""SAN policy, table-driven: what a cluster's certificates may name, and the refusal messages."""

from __future__ import annotations

import ipaddress

import pytest

from discoverd.certs import policy
from discoverd.certs.x509 import Profile, Sans
from discoverd.errors import Invalid

TOKEN = "ab" * 16
P = policy.SanPolicy(
    domains=(f"{TOKEN}.etcd.internal", "prod.etcd.internal"),
    dns_suffixes=("etcd.example.com",),
    cidrs=(ipaddress.ip_network("203.0.113.0/24"),),
)


def sans(*names: str) -> Sans:
    dns, ips = [], []
    for name in names:
        try:
            ips.append(ipaddress.ip_address(name))
        except ValueError:
            dns.append(name)
    return Sans(tuple(dns), tuple(ips))


@pytest.mark.parametrize(
    "name",
    [
        "localhost", f"{TOKEN}.etcd.internal", f"infra0.{TOKEN}.etcd.internal",
        "infra0.prod.etcd.internal", "prod.etcd.internal", "etcd.example.com",
        "node1.etcd.example.com", "INFRA0.PROD.ETCD.INTERNAL", "10.0.0.1", "172.31.255.1",
        "192.168.1.1", "100.64.0.1", "127.0.0.1", "127.1.2.3", "::1", "fd00::1", "203.0.113.7",
    ],
)  # fmt: skip
def test_allowed(name):
    P.check(sans(name))


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("example.com", "only localhost and names under"),
        ("etcd.internal", "only localhost and names under"),
        (f"x{TOKEN}.etcd.internal", "only localhost and names under"),
        ("other.etcd.internal", "only localhost and names under"),
        ("example.com.etcd.example.com.evil", "only localhost and names under"),
        (f"*.{TOKEN}.etcd.internal", "wildcard"),
        ("bad..name", "not a valid DNS name"),
        ("8.8.8.8", "only loopback, private ranges and the cluster's CIDRs"),
        ("203.0.114.1", "203.0.113.0/24"),
        ("2001:db8::1", "only loopback"),
        ("169.254.1.1", "only loopback"),
    ],
)
def test_refused_with_the_rule(name, rule):
    with pytest.raises(Invalid, match=rule.replace("(", r"\(").replace(")", r"\)")) as caught:
        P.check(sans(name))
    assert name in caught.value.message or name in caught.value.cause


def test_peer_and_server_always_get_loopback():
    result = policy.leaf_sans(Profile.PEER, sans("10.0.0.1", f"infra0.{TOKEN}.etcd.internal"), P)
    assert result.as_strings() == [
        f"infra0.{TOKEN}.etcd.internal",
        "localhost",
        "10.0.0.1",
        "127.0.0.1",
        "::1",
    ]


def test_client_certificates_carry_no_sans():
    assert policy.leaf_sans(Profile.CLIENT, Sans(), P) == Sans()
    with pytest.raises(Invalid, match="no SANs"):
        policy.leaf_sans(Profile.CLIENT, sans("10.0.0.1"), P)


@pytest.mark.parametrize(
    ("profile", "name", "ok"),
    [
        (Profile.PEER, "infra0", True), (Profile.PEER, "infra_0", True),
        (Profile.PEER, "bad.name", False), (Profile.PEER, "-x", False),
        (Profile.CLIENT, "root", True), (Profile.CLIENT, "user@example.com", True),
        (Profile.CLIENT, "a b", False), (Profile.CLIENT, "", False),
    ],
)  # fmt: skip
def test_subject_names(profile, name, ok):
    if ok:
        policy.check_subject_name(profile, name)
    else:
        with pytest.raises(Invalid):
            policy.check_subject_name(profile, name)
