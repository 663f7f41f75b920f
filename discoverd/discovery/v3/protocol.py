"""The etcd v3 discovery protocol, as pure functions: no I/O, no gRPC server, no etcd.

What etcd >= 3.6 members (`--discovery-token`, `--discovery-endpoints`) and etcdctl send, and
what they read back. A token's keys, as the client sees them:

    /_etcd/registry/<token>/_config/size        the cluster size (read-only)
    /_etcd/registry/<token>/members/<id>        a registration `name=peerURL[,…]` (create-only)

Every request is scoped to one token: a range that starts at `/_etcd/registry/<token>` is
clipped to that token's keys (etcdctl's `get --prefix /_etcd/registry/T` asks for everything up
to `/_etcd/registry/U`, which would cover tokens `T0…`); anything else is refused. Revisions are
the backing etcd's: a registration's create revision is the revision of the transaction that
stored it, and, registrations being create-only, the state at revision R is the registrations
created at or before R.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from discoverd.directory.rules import TOKEN_RE, clip, parse_member_id
from discoverd.discovery.v3.pb import mvcc_pb2
from discoverd.errors import Forbidden, Invalid, TooLarge
from discoverd.models import Cluster

REGISTRY = b"/_etcd/registry/"
SIZE_SUFFIX = b"_config/size"
MEMBERS_SUFFIX = b"members/"
MAX_KEY_BYTES = 256  # a registry key is ~90 bytes; anything longer is not one
TOKEN_LEN = 32
_ALL = b"\x00"  # range_end "\0": every key from `key` on

ONLY_REGISTRY = (
    "discoverd serves only the keys of one discovery token: /_etcd/registry/<token>/_config/size "
    "and /_etcd/registry/<token>/members/<id>"
)


@dataclass(frozen=True, slots=True)
class Scope:
    """The keys of one token that a request covers: [low, high)."""

    token: str
    low: bytes
    high: bytes

    def covers(self, key: bytes) -> bool:
        return self.low <= key < self.high


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a token as the v3 client sees it."""

    key: bytes
    value: bytes
    revision: int  # create revision = mod revision (nothing is ever changed)

    def kv(self, keys_only: bool = False) -> mvcc_pb2.KeyValue:
        return mvcc_pb2.KeyValue(
            key=self.key,
            create_revision=self.revision,
            mod_revision=self.revision,
            version=1,
            value=b"" if keys_only else self.value,
        )


def token_prefix(token: str) -> bytes:
    return REGISTRY + token.encode() + b"/"


def size_key(token: str) -> bytes:
    return token_prefix(token) + SIZE_SUFFIX


def member_key(token: str, member_id: str) -> bytes:
    return token_prefix(token) + MEMBERS_SUFFIX + member_id.encode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (no 0xff bytes here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def scope(key: bytes, range_end: bytes) -> Scope:
    """The token keys that a Range or Watch of [key, range_end) may see."""
    if len(key) > MAX_KEY_BYTES or len(range_end) > MAX_KEY_BYTES:
        raise TooLarge(f"keys are at most {MAX_KEY_BYTES} bytes")
    token = _token_of(key)
    prefix = token_prefix(token)
    if not range_end:  # one key
        return Scope(token, key, key + b"\x00")
    high = prefix_end(prefix) if range_end == _ALL else min(range_end, prefix_end(prefix))
    return Scope(token, max(key, prefix), high)


def _token_of(key: bytes) -> str:
    if not key.startswith(REGISTRY):
        raise Forbidden(ONLY_REGISTRY, cause=_show(key))
    raw = key[len(REGISTRY) : len(REGISTRY) + TOKEN_LEN]
    rest = key[len(REGISTRY) + TOKEN_LEN :]
    token = raw.decode("ascii", "replace")
    if not TOKEN_RE.fullmatch(token) or rest[:1] not in (b"", b"/"):
        raise Forbidden(
            "a request must name one discovery token (32 lowercase hex): " + ONLY_REGISTRY,
            cause=_show(key),
        )
    return token


def registration_target(key: bytes) -> tuple[str, str]:
    """(token, member ID) of a Put key; the size key and every other key are refused."""
    if len(key) > MAX_KEY_BYTES:
        raise TooLarge(f"keys are at most {MAX_KEY_BYTES} bytes")
    token = _token_of(key)
    rest = key[len(token_prefix(token)) :]
    if rest == SIZE_SUFFIX:
        raise Forbidden(
            "the size key is read-only: a token's size is fixed when it is created "
            "(POST /new?size=N)",
            cause=_show(key),
        )
    member_id = rest.removeprefix(MEMBERS_SUFFIX).decode("ascii", "replace")
    if not rest.startswith(MEMBERS_SUFFIX) or not member_id:
        raise Forbidden(
            "only /_etcd/registry/<token>/members/<id> may be written (id: an etcd member ID), "
            "and only once",
            cause=_show(key),
        )
    return token, parse_member_id(member_id)


def registration_value(value: bytes) -> str:
    """The text of a registration value; the naming rules check it further."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise Invalid("value must be visible ASCII: name=peerURL[,name=peerURL...]") from None


def entries(cluster: Cluster) -> tuple[Entry, ...]:
    """Every key of a cluster, sorted by key (memoized on the immutable cluster)."""
    found: tuple[Entry, ...] | None = cluster.memo.get("v3/entries")
    if found is None:
        size = Entry(size_key(cluster.token), str(cluster.config.size).encode(), cluster.created)
        members = sorted(
            (
                Entry(member_key(cluster.token, m.member_id), m.value.encode(), m.created)
                for m in cluster.members
            ),
            key=lambda entry: entry.key,
        )
        found = cluster.memo["v3/entries"] = (size, *members) if members else (size,)
        cluster.memo["v3/keys"] = [entry.key for entry in found]
    return found


def select(cluster: Cluster, where: Scope, at_revision: int = 0) -> list[Entry]:
    """The entries of `cluster` inside `where`, as of `at_revision` (0: now), by key."""
    every = entries(cluster)
    keys: list[bytes] = cluster.memo["v3/keys"]
    start = bisect.bisect_left(keys, where.low)
    stop = bisect.bisect_left(keys, where.high)
    chosen = every[start:stop]
    if at_revision:
        return [entry for entry in chosen if entry.revision <= at_revision]
    return list(chosen)


def since(cluster: Cluster, where: Scope, revision: int) -> list[Entry]:
    """The entries inside `where` created at or after `revision`, in revision order: the
    events a watch from `revision` replays."""
    return sorted(
        (entry for entry in select(cluster, where) if entry.revision >= revision),
        key=lambda entry: entry.revision,
    )


def _show(key: bytes) -> str:
    return clip(key.decode("ascii", "backslashreplace"))
