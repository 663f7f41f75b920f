"""The etcd v2 discovery protocol, as pure functions: no I/O, no etcd, no aiohttp.

What the real etcd binaries (3.4-3.6, `--discovery`) send and expect: keys and paths, the
`name=peerURL[,…]` registration value, the v2 keys API JSON for nodes, events and errors.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from discoverd.errors import Invalid, TooLarge
from discoverd.models import Cluster, Member

TOKEN_RE = re.compile(r"[0-9a-f]{32}")
# etcd names its key with the member ID in lowercase hex, unpadded (types.ID.String()).
MEMBER_ID_RE = re.compile(r"[0-9a-f]{1,16}")
MEMBER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INDEX_RE = re.compile(r"[0-9]{1,19}")  # a v2 index is a uint64
CLUSTER_NAME_RE = re.compile(r"[a-z]([a-z0-9-]{0,29}[a-z0-9])?")
RESERVED_NAMES = frozenset({"ns", "hostmaster"})  # names the zone itself uses
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")

MAX_VALUE_BYTES = 4096
MAX_PEER_URLS = 16

# v2 error codes (etcd server/etcdserver/api/v2error) and the status real etcd sends with each.
KEY_NOT_FOUND = 100
NOT_A_FILE = 102
NODE_EXISTS = 105
ROOT_READ_ONLY = 107
INVALID_FIELD = 209
INVALID_FORM = 210
RAFT_INTERNAL = 300


class Target(Enum):
    """What a path under a token names."""

    DIRECTORY = "directory"  # /<token> or /<token>/
    CONFIG_DIR = "config"  # /<token>/_config
    SIZE = "size"  # /<token>/_config/size
    MEMBER = "member"  # /<token>/<id>


@dataclass(frozen=True, slots=True)
class TokenPath:
    token: str
    target: Target
    member_id: str = ""

    @property
    def key(self) -> str:
        """The v2 key of this path as the client sees it (`node.key`)."""
        if self.target is Target.DIRECTORY:
            return f"/{self.token}"
        if self.target is Target.CONFIG_DIR:
            return f"/{self.token}/_config"
        if self.target is Target.SIZE:
            return f"/{self.token}/_config/size"
        return f"/{self.token}/{self.member_id}"


def new_token() -> str:
    """32 lowercase hex characters, 128 bits from the OS CSPRNG."""
    return secrets.token_hex(16)


def parse_token_path(token: str, rest: str) -> TokenPath:
    """`rest` is what follows `/<token>` in the URL path ('' or '/...')."""
    if not TOKEN_RE.fullmatch(token):
        raise Invalid("a discovery token is 32 lowercase hex characters", cause=_clip(token))
    parts = [part for part in rest.split("/") if part]
    if not parts:
        return TokenPath(token, Target.DIRECTORY)
    if parts == ["_config"]:
        return TokenPath(token, Target.CONFIG_DIR)
    if parts == ["_config", "size"]:
        return TokenPath(token, Target.SIZE)
    if len(parts) == 1 and MEMBER_ID_RE.fullmatch(parts[0]):
        return TokenPath(token, Target.MEMBER, parts[0])
    raise Invalid(
        "a registration key is an etcd member ID: 1 to 16 lowercase hex characters",
        cause=_clip("/".join(parts)),
    )


def parse_size(raw: str | None, *, default: int, maximum: int) -> int:
    """The `size` of a new token: an integer 1..maximum; `default` when absent."""
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"[0-9]{1,6}", text):  # not \d: it admits every script's digits
        raise Invalid(f"size must be a whole number from 1 to {maximum}", cause=_clip(raw))
    size = int(text)
    if not 1 <= size <= maximum:
        raise Invalid(f"size must be a whole number from 1 to {maximum}", cause=_clip(raw))
    return size


def parse_cluster_name(raw: str | None) -> str | None:
    """An optional cluster name: one lowercase DNS label (it becomes `<name>.<zone>` and the
    `--discovery-srv-name`), at most 31 characters so it can never look like a token."""
    if raw is None or raw == "":
        return None
    if not CLUSTER_NAME_RE.fullmatch(raw) or raw in RESERVED_NAMES:
        raise Invalid(
            "name must be 1-31 lowercase letters, digits or '-', starting with a letter "
            f"(not {', '.join(sorted(RESERVED_NAMES))})",
            cause=_clip(raw),
        )
    return raw


def parse_member_value(raw: str) -> str:
    """Check a registration value `name=peerURL[,name=peerURL…]`; returned unchanged.

    This is what etcd writes (sorted pairs joined by commas) and what it parses back with
    types.NewURLsMap when the cluster forms, so anything else would break every member.
    """
    if len(raw.encode()) > MAX_VALUE_BYTES:
        raise TooLarge(f"value is over {MAX_VALUE_BYTES} bytes")
    if not _VISIBLE_ASCII.fullmatch(raw):
        # Python's urlsplit drops tabs and newlines that Go's url.Parse rejects: one such
        # registration would make every member of the cluster fail with ErrInvalidURL.
        raise Invalid("value must be visible ASCII with no spaces or control characters")
    pairs = raw.split(",")
    if len(pairs) > MAX_PEER_URLS:
        raise Invalid(f"a member may register at most {MAX_PEER_URLS} peer URLs")
    names = set()
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep:
            raise Invalid("value must be name=peerURL[,name=peerURL...]", cause=_clip(pair))
        if not MEMBER_NAME_RE.fullmatch(name):
            raise Invalid(
                "member name must be 1-63 letters, digits, '.', '_' or '-'", cause=_clip(name)
            )
        check_peer_url(url)
        names.add(name)
    if len(names) != 1:
        raise Invalid("all peer URLs of one registration must carry the same member name")
    return raw


def check_peer_url(url: str) -> None:
    """A peer URL as etcd accepts it: http(s)://host:port with no path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid("peer URL is not a valid URL", cause=_clip(url)) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("peer URL must be http(s)://host:port", cause=_clip(url))
    if port is None:
        raise Invalid("peer URL must name a port", cause=_clip(url))
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise Invalid("peer URL must be scheme://host:port and nothing else", cause=_clip(url))
    if not _is_host(parts.hostname):
        raise Invalid(
            "peer URL host must be an IP address (no IPv6 zone) or a DNS name of "
            "ASCII labels of 1-63 characters",
            cause=_clip(url),
        )


def _is_host(host: str) -> bool:
    if "%" in host:  # an IPv6 zone (fe80::1%eth0) means nothing to another machine, or to DNS
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host)) and len(host) <= 253
    return True


def member_name(value: str) -> str:
    """The member name of a stored registration value."""
    return value.partition("=")[0]


# -- rendering ---------------------------------------------------------------------------------


def member_node(token: str, member: Member) -> dict[str, Any]:
    return {
        "key": f"/{token}/{member.member_id}",
        "value": member.value,
        "modifiedIndex": member.created,
        "createdIndex": member.created,
    }


def directory_node(cluster: Cluster, members: Iterable[Member]) -> dict[str, Any]:
    node: dict[str, Any] = {"key": f"/{cluster.token}", "dir": True}
    nodes = [member_node(cluster.token, member) for member in members]
    if nodes:
        node["nodes"] = nodes
    node["modifiedIndex"] = cluster.created
    node["createdIndex"] = cluster.created
    return node


def size_node(cluster: Cluster) -> dict[str, Any]:
    return {
        "key": f"/{cluster.token}/_config/size",
        "value": str(cluster.config.size),
        "modifiedIndex": cluster.created,
        "createdIndex": cluster.created,
    }


def config_dir_node(cluster: Cluster) -> dict[str, Any]:
    return {
        "key": f"/{cluster.token}/_config",
        "dir": True,
        "nodes": [size_node(cluster)],
        "modifiedIndex": cluster.created,
        "createdIndex": cluster.created,
    }


def render(action: str, node: dict[str, Any]) -> bytes:
    """A v2 keys API success body, with etcd's trailing newline."""
    return json.dumps({"action": action, "node": node}, separators=(",", ":")).encode() + b"\n"


def render_error(code: int, message: str, cause: str, index: int) -> bytes:
    """A v2 keys API error body: what etcd's client decodes for any non-2xx status."""
    body = {"errorCode": code, "message": message, "cause": cause, "index": index}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _clip(text: str, limit: int = 64) -> str:
    """Echo at most `limit` characters of client input back in an error."""
    return text if len(text) <= limit else text[:limit] + "..."
