"""The pure v2 protocol functions, table-driven."""

from __future__ import annotations

import json
import re

import pytest

from discoverd.directory import rules
from discoverd.discovery.v2 import protocol
from discoverd.discovery.v2.protocol import Target
from discoverd.errors import Invalid, TooLarge
from discoverd.models import Cluster, ClusterConfig, Member

TOKEN = "3e86b59982e49066c5d813af1c2e2579"


def test_new_token_is_32_lowercase_hex_and_unique():
    tokens = {rules.new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in tokens)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 3), ("", 3), ("1", 1), ("5", 5), ("99", 99)],
)
def test_parse_size_accepts(raw, expected):
    assert rules.parse_size(raw, default=3, maximum=99) == expected


@pytest.mark.parametrize(
    "raw",
    # The last five: Python's strip() would turn them into sizes; Go's ParseInt refuses them.
    [
        *["0", "-1", "100", "1000000000000", "3.0", "three", "0x3", "1e2", "+3", "3 3", "٣"],
        *[" 7 ", "3\n", " 3", "3\t", "\n"],
    ],
)
def test_parse_size_refuses(raw):
    with pytest.raises(Invalid, match="size must be a whole number from 1 to 99"):
        rules.parse_size(raw, default=3, maximum=99)


@pytest.mark.parametrize(
    ("rest", "target", "member_id"),
    [
        ("", Target.DIRECTORY, ""),
        ("/", Target.DIRECTORY, ""),
        ("/_config", Target.CONFIG_DIR, ""),
        ("/_config/size", Target.SIZE, ""),
        ("/8e9e05c52164694d", Target.MEMBER, "8e9e05c52164694d"),
        ("/a", Target.MEMBER, "a"),
    ],
)
def test_parse_token_path(rest, target, member_id):
    path = protocol.parse_token_path(TOKEN, rest)
    assert (path.target, path.member_id) == (target, member_id)


@pytest.mark.parametrize(
    ("token", "rest"),
    [
        ("3E86B59982E49066C5D813AF1C2E2579", ""),  # upper case is not a token
        (TOKEN[:-1], ""),
        (TOKEN + "0", ""),
        ("../etc/passwd", ""),
        (TOKEN, "/_config/size/x"),
        (TOKEN, "/_config/other"),
        (TOKEN, "/8E9E05C52164694D"),
        (TOKEN, "/8e9e05c52164694d0"),  # 17 hex digits: no uint64
        (TOKEN, "/zz"),
        (TOKEN, "/0"),  # etcd never uses member ID 0
        (TOKEN, "/000"),
        (TOKEN, "/0abc"),  # etcd writes IDs unpadded: "abc" and "0abc" would be one member
        (TOKEN, "/a/b"),
    ],
)
def test_parse_token_path_refuses(token, rest):
    with pytest.raises(Invalid):
        protocol.parse_token_path(token, rest)


@pytest.mark.parametrize(
    "value",
    [
        "infra0=http://10.0.1.10:2380",
        "infra0=https://10.0.1.10:2380",
        "m-1.a_b=http://[fd00::1]:2380",
        "infra0=http://node0.example.com:2380,infra0=http://10.0.1.10:2380",
    ],
)
def test_member_value_accepts(value):
    assert rules.parse_member_value(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "name=peerURL"),
        ("infra0", "name=peerURL"),
        ("=http://10.0.0.1:2380", "member name"),
        ("in fra=http://10.0.0.1:2380", "visible ASCII"),
        ("in/fra=http://10.0.0.1:2380", "member name"),
        ("infra0=ftp://10.0.0.1:2380", "http"),
        ("infra0=http://10.0.0.1", "port"),
        ("infra0=http://10.0.0.1:99999", "valid URL"),
        ("infra0=http://10.0.0.1:2380/path", "nothing else"),
        ("infra0=http://u:p@10.0.0.1:2380", "nothing else"),
        ("a=http://10.0.0.1:2380,b=http://10.0.0.2:2380", "same member name"),
        ("a=http://10.0.0.1:2380," * 17, "at most 16"),
        ("infra0=http://10.0.0.1:2380\n", "visible ASCII"),
        ("infra0=http://10.0.0.1:23\t80", "visible ASCII"),
        ("infra0=http://10.0.0.1:2380 ", "visible ASCII"),
    ],
)
def test_member_value_refuses(value, reason):
    with pytest.raises(Invalid, match=reason):
        rules.parse_member_value(value)


def test_member_value_size_is_bounded():
    with pytest.raises(TooLarge):
        rules.parse_member_value("a=http://" + "h" * 5000 + ":2380")


def test_rendered_directory_is_what_etcd_decodes():
    members = (Member("b", "n2=http://10.0.0.2:2380", 7), Member("a", "n1=http://10.0.0.1:2380", 5))
    cluster = Cluster(
        TOKEN, ClusterConfig(size=3, created_at=0), created=4, lease=1, members=members
    )
    body = protocol.render("get", protocol.directory_node(cluster, members))
    assert body.endswith(b"\n")
    decoded = json.loads(body)
    assert decoded["action"] == "get"
    assert decoded["node"]["dir"] is True
    assert decoded["node"]["key"] == f"/{TOKEN}"
    assert [n["key"] for n in decoded["node"]["nodes"]] == [f"/{TOKEN}/b", f"/{TOKEN}/a"]
    assert decoded["node"]["nodes"][0] == {
        "key": f"/{TOKEN}/b",
        "value": "n2=http://10.0.0.2:2380",
        "modifiedIndex": 7,
        "createdIndex": 7,
    }


def test_size_node_value_is_a_bare_decimal():
    cluster = Cluster(TOKEN, ClusterConfig(size=5, created_at=0), created=4, lease=1)
    assert protocol.size_node(cluster)["value"] == "5"


def test_error_body_is_v2_json():
    body = json.loads(protocol.render_error(105, "Key already exists", f"/{TOKEN}/a", 12))
    assert body == {
        "errorCode": 105,
        "message": "Key already exists",
        "cause": f"/{TOKEN}/a",
        "index": 12,
    }


def test_error_cause_echo_is_clipped():
    with pytest.raises(Invalid) as caught:
        rules.parse_size("x" * 500, default=3, maximum=99)
    assert len(caught.value.cause) < 80


@pytest.mark.parametrize(
    "value",
    [
        "x=http://[fe80::1%25eth0]:2380",  # a scoped IPv6 address: not publishable
        "x=http://[fe80::1%eth0]:2380",
        "x=http://a..b:2380",
        "x=http://" + "a" * 64 + ".example:2380",
    ],
)
def test_peer_hosts_that_dns_cannot_publish_are_refused(value):
    with pytest.raises(Invalid, match="peer URL host"):
        rules.parse_member_value(value)
