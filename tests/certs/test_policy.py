"""SAN policy, table-driven: what a cluster's certificates may name, and the refusal messages."""

from __future__ import annotations

import ipaddress

import pytest

from discoverd.certs import policy
from discoverd.certs.pki import Profile, Sans
from discoverd.directory.rules import cluster_label
from discoverd.errors import Conflict, DiscoverdError, Forbidden, Invalid

TOKEN = "ab" * 16
LABEL = cluster_label(TOKEN)
P = policy.SanPolicy(
    domains=(f"{LABEL}.etcd.internal", "prod.etcd.internal"),
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
        "localhost", f"{LABEL}.etcd.internal", f"infra0.{LABEL}.etcd.internal",
        "infra0.prod.etcd.internal", "prod.etcd.internal", "etcd.example.com",
        "infra0.etcd.example.com", "INFRA0.PROD.ETCD.INTERNAL", "infra0.prod.etcd.internal.",
        "10.0.0.1", "172.31.255.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "127.1.2.3",
        "::1", "fd00::1", "203.0.113.7",
    ],
)  # fmt: skip
def test_allowed(name):
    P.check(sans(name), "infra0")


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("example.com", "names only localhost, "),
        ("etcd.internal", "names only localhost, "),
        (f"x{LABEL}.etcd.internal", "names only localhost, "),
        ("other.etcd.internal", "names only localhost, "),
        ("example.com.etcd.example.com.evil", "names only localhost, "),
        # another member's names, and deeper names under the cluster domains (#7)
        (f"infra1.{LABEL}.etcd.internal", "a certificate of infra0 names only"),
        ("infra1.prod.etcd.internal", "a certificate of infra0 names only"),
        ("node1.etcd.example.com", "a certificate of infra0 names only"),
        ("x.infra0.prod.etcd.internal", "a certificate of infra0 names only"),
        # the token is a secret: it is no cluster domain (#9)
        (f"{TOKEN}.etcd.internal", "names only localhost, "),
        (f"infra0.{TOKEN}.etcd.internal", "names only localhost, "),
        (f"*.{LABEL}.etcd.internal", "wildcard"),
        ("bad..name", "not a valid DNS name"),
        ("8.8.8.8", "only loopback, private ranges and the cluster's CIDRs"),
        ("203.0.114.1", "203.0.113.0/24"),
        ("2001:db8::1", "only loopback"),
        ("169.254.1.1", "only loopback"),
    ],
)
def test_refused_with_the_rule(name, rule):
    with pytest.raises(Invalid, match=rule.replace("(", r"\(").replace(")", r"\)")) as caught:
        P.check(sans(name), "infra0")
    assert name in caught.value.message or name in caught.value.cause


@pytest.mark.parametrize(
    ("ip", "holder", "refused"),
    [
        ("10.0.0.2", "infra1", True),  # another member's address
        ("10.0.0.2", "infra0", False),  # its own (a second profile, a re-enrollment)
        ("127.0.0.1", "infra1", False),  # loopback is in every member's certificate
        ("10.0.0.3", "infra1", False),  # nobody holds it
    ],
)
def test_an_address_belongs_to_one_member(ip, holder, refused):
    taken = {ipaddress.ip_address(a): holder for a in ("10.0.0.2", "127.0.0.1")}
    if refused:
        with pytest.raises(Conflict, match=f"IP SAN {ip} is not allowed: .* member {holder}"):
            P.check(sans(ip), "infra0", taken)
    else:
        P.check(sans(ip), "infra0", taken)


def test_peer_and_server_always_get_loopback():
    result = policy.leaf_sans(
        Profile.PEER, sans("10.0.0.1", f"Infra0.{LABEL}.etcd.internal."), P, "infra0"
    )
    assert result.as_strings() == [
        f"infra0.{LABEL}.etcd.internal",
        "localhost",
        "10.0.0.1",
        "127.0.0.1",
        "::1",
    ]


def test_a_renewal_relabels_what_older_versions_put_under_the_token():
    old = sans("10.0.0.1", f"infra0.{TOKEN}.etcd.internal", f"{TOKEN}.etcd.internal", "localhost")
    renewed = policy.relabel(old, TOKEN, LABEL)
    assert renewed.as_strings() == [
        f"infra0.{LABEL}.etcd.internal", f"{LABEL}.etcd.internal", "localhost", "10.0.0.1"
    ]  # fmt: skip
    assert policy.relabel(renewed, TOKEN, LABEL) == renewed


def test_client_certificates_carry_no_sans():
    assert policy.leaf_sans(Profile.CLIENT, Sans(), P, "alice") == Sans()
    with pytest.raises(Invalid, match="no SANs"):
        policy.leaf_sans(Profile.CLIENT, sans("10.0.0.1"), P, "alice")


@pytest.mark.parametrize(
    ("profile", "name", "allow_root", "expected"),
    [
        (Profile.PEER, "infra0", False, "infra0"), (Profile.PEER, "infra_0", False, "infra_0"),
        (Profile.PEER, "INFRA0", False, "infra0"), (Profile.SERVER, "Infra0", False, "infra0"),
        (Profile.CLIENT, "user@example.com", False, "user@example.com"),
        (Profile.CLIENT, "Backup", False, "backup"), (Profile.CLIENT, "root", True, "root"),
        (Profile.PEER, "bad.name", False, Invalid), (Profile.PEER, "-x", False, Invalid),
        (Profile.CLIENT, "a b", False, Invalid), (Profile.CLIENT, "", False, Invalid),
        # etcd's superuser: never a member, a client only where the cluster allows it (#7)
        (Profile.CLIENT, "root", False, Forbidden), (Profile.CLIENT, "ROOT", False, Forbidden),
        (Profile.PEER, "root", False, Forbidden), (Profile.PEER, "root", True, Forbidden),
        (Profile.SERVER, "Root", True, Forbidden),
    ],
)  # fmt: skip
def test_subject_names(profile, name, allow_root, expected):
    if isinstance(expected, str):
        assert policy.subject_name(profile, name, allow_root=allow_root) == expected
    else:
        assert issubclass(expected, DiscoverdError)
        with pytest.raises(expected):
            policy.subject_name(profile, name, allow_root=allow_root)
