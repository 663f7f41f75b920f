"""The naming rules every face shares: tokens, member IDs and names, registration values,
peer URLs, cluster names, labels and sizes, and the bounds of what a new token may carry.
Pure functions, no I/O.

A token is a bearer secret, so it never names anything: a cluster is published in DNS and in
certificates under its label (`cluster_label`), a hash of the token that cannot be reversed.

A registration value is what etcd writes under its discovery key, v2 or v3 alike:
sorted `name=peerURL` pairs joined by commas. etcd parses every member's value back when the
cluster forms, so one bad value would break every member: values are checked before they are
stored, by the same rules on every face.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from urllib.parse import urlsplit

from discoverd.errors import Invalid, TooLarge

TOKEN_RE = re.compile(r"[0-9a-f]{32}")
# etcd names its key with the member ID in lowercase hex, unpadded (types.ID.String()), and
# never uses ID 0: so no leading zero, which would also let one ID register under two keys.
MEMBER_ID_RE = re.compile(r"[1-9a-f][0-9a-f]{0,15}")
MEMBER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INDEX_RE = re.compile(r"[0-9]{1,19}")  # a v2 index is a uint64
CLUSTER_NAME_RE = re.compile(r"[a-z]([a-z0-9-]{0,29}[a-z0-9])?")
RESERVED_NAMES = frozenset({"ns", "hostmaster"})  # names the zone itself uses
LABEL_RE = re.compile(r"c-[0-9a-f]{16}")  # the shape of a cluster label; no name may take it
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")

MEMBER_ID_RULE = (
    "a registration key is an etcd member ID: 1 to 16 lowercase hex characters, "
    "no leading zero (etcd never uses ID 0)"
)
MAX_VALUE_BYTES = 4096
MAX_PEER_URLS = 16
MAX_CIDRS = 4  # `cidr=` ranges a new token may carry (each one is stored with the token)
MAX_DNS_SUFFIXES = 4  # `dns=` suffixes a new token may carry


def cluster_label(token: str) -> str:
    """The cluster's non-secret DNS label: `c-` and 16 hex of SHA-256("discoverd-label:" +
    token). It names the cluster in DNS (`<label>.<zone>`) and in certificates; the token
    itself never appears in either (resolvers and TLS peers would see a bearer secret)."""
    return "c-" + hashlib.sha256(b"discoverd-label:" + token.encode()).hexdigest()[:16]


def new_token() -> str:
    """32 lowercase hex characters, 128 bits from the OS CSPRNG."""
    return secrets.token_hex(16)


def parse_size(raw: str | None, *, default: int, maximum: int) -> int:
    """The `size` of a new token: an integer 1..maximum; `default` when absent."""
    if raw is None or raw == "":
        return default
    text = raw  # no strip(): "3\n" and " 3" are not sizes
    if not re.fullmatch(r"[0-9]{1,6}", text):  # not \d: it admits every script's digits
        raise Invalid(f"size must be a whole number from 1 to {maximum}", cause=clip(raw))
    size = int(text)
    if not 1 <= size <= maximum:
        raise Invalid(f"size must be a whole number from 1 to {maximum}", cause=clip(raw))
    return size


def parse_cluster_name(raw: str | None) -> str | None:
    """An optional cluster name: one lowercase DNS label (it becomes `<name>.<zone>` and the
    `--discovery-srv-name`), at most 31 characters so it can never look like a token."""
    if raw is None or raw == "":
        return None
    if not CLUSTER_NAME_RE.fullmatch(raw) or raw in RESERVED_NAMES or LABEL_RE.fullmatch(raw):
        raise Invalid(
            "name must be 1-31 lowercase letters, digits or '-', starting with a letter "
            f"(not {', '.join(sorted(RESERVED_NAMES))}, nor c- and 16 hex: a cluster label)",
            cause=clip(raw),
        )
    return raw


def parse_member_id(raw: str) -> str:
    """A registration key: an etcd member ID as etcd writes it, returned unchanged."""
    if not MEMBER_ID_RE.fullmatch(raw):
        raise Invalid(MEMBER_ID_RULE, cause=clip(raw))
    return raw


def check_token_config(cidrs: tuple[str, ...], dns_suffixes: tuple[str, ...]) -> None:
    """The bounds of what one new token may carry beyond its size (stored with every token)."""
    if len(cidrs) > MAX_CIDRS:
        raise Invalid(f"at most {MAX_CIDRS} cidr ranges per cluster", cause=f"{len(cidrs)} given")
    if len(dns_suffixes) > MAX_DNS_SUFFIXES:
        raise Invalid(
            f"at most {MAX_DNS_SUFFIXES} dns suffixes per cluster",
            cause=f"{len(dns_suffixes)} given",
        )


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
            raise Invalid("value must be name=peerURL[,name=peerURL...]", cause=clip(pair))
        if not MEMBER_NAME_RE.fullmatch(name):
            raise Invalid(
                "member name must be 1-63 letters, digits, '.', '_' or '-'", cause=clip(name)
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
        raise Invalid("peer URL is not a valid URL", cause=clip(url)) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("peer URL must be http(s)://host:port", cause=clip(url))
    if port is None:
        raise Invalid("peer URL must name a port", cause=clip(url))
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise Invalid("peer URL must be scheme://host:port and nothing else", cause=clip(url))
    if not _is_host(parts.hostname):
        raise Invalid(
            "peer URL host must be an IP address (no IPv6 zone) or a DNS name of "
            "ASCII labels of 1-63 characters",
            cause=clip(url),
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


def clip(text: str, limit: int = 64) -> str:
    """Echo at most `limit` characters of client input back in an error."""
    return text if len(text) <= limit else text[:limit] + "..."
