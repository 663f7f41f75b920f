"""The etcd v2 discovery protocol, as pure functions: no I/O, no etcd, no aiohttp.

What the real etcd binaries (3.4-3.6, `--discovery`) send and expect: the paths under a token,
the v2 keys API JSON for nodes, events and errors. The naming rules shared with the other faces
(tokens, member IDs, registration values) live in `discoverd.directory.rules`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from discoverd.directory.rules import MEMBER_ID_RE, MEMBER_ID_RULE, TOKEN_RE, clip
from discoverd.errors import Invalid
from discoverd.models import Cluster, Member

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


def parse_token_path(token: str, rest: str) -> TokenPath:
    """`rest` is what follows `/<token>` in the URL path ('' or '/...')."""
    if not TOKEN_RE.fullmatch(token):
        raise Invalid("a discovery token is 32 lowercase hex characters", cause=clip(token))
    parts = [part for part in rest.split("/") if part]
    if not parts:
        return TokenPath(token, Target.DIRECTORY)
    if parts == ["_config"]:
        return TokenPath(token, Target.CONFIG_DIR)
    if parts == ["_config", "size"]:
        return TokenPath(token, Target.SIZE)
    if len(parts) == 1 and MEMBER_ID_RE.fullmatch(parts[0]):
        return TokenPath(token, Target.MEMBER, parts[0])
    raise Invalid(MEMBER_ID_RULE, cause=clip("/".join(parts)))


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
