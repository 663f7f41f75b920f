"""v3 discovery helpers for the e2e tests and the bench's anchor: etcdctl runs, the member ID a
stock etcd derives, the "cluster formed" check, and the two discovery services a v3 member can
be pointed at: etcd's own recommended setup (`ReferenceDiscovery`, a real etcd used as the
discovery endpoint, the size key put by hand with etcdctl) and discoverd's gRPC face
(`DiscoverdDiscovery`). Both answer the same `DiscoveryService` calls, so a test can run
against either and the real etcd anchors what discoverd must do.

The registry keys are spelled here as etcd's v3 discovery client spells them (the wire
contract under test), not taken from discoverd.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tests.e2e.conftest import (
    MEMBER_READY_TIMEOUT,
    BackingEtcd,
    EtcdBinary,
    EtcdMember,
    Members,
    V3Discovery,
    etcd_3_7,
    wait_for,
    wait_healthy,
)
from tests.support import DiscoverdProcess, http

REGISTRY = "/_etcd/registry"
ETCDCTL_TIMEOUT = 20.0


def size_key(token: str) -> str:
    return f"{REGISTRY}/{token}/_config/size"


def members_prefix(token: str) -> str:
    return f"{REGISTRY}/{token}/members"


def member_id(peer_urls: Sequence[str], token: str) -> str:
    """The ID etcd gives a member bootstrapping with v3 discovery: the first 8 bytes of
    sha1(sorted peer URLs + token), big-endian, in hex without padding."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big'):x}"


def member_key(token: str, member: EtcdMember) -> str:
    return f"{members_prefix(token)}/{member_id([member.peer_url], token)}"


def registration(member: EtcdMember) -> str:
    """The value a member registers: `name=peerURL`."""
    return f"{member.name}={member.peer_url}"


# -- etcdctl -----------------------------------------------------------------------------------


def etcdctl(
    binary: EtcdBinary,
    endpoints: Sequence[str],
    *args: str,
    stdin: str | None = None,
    timeout: float = ETCDCTL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """One etcdctl command on `endpoints` (etcdctl >= 3.4 speaks the v3 API by default; 3.7
    warns about ETCDCTL_API, so it is not set); never raises on a non-zero exit."""
    return subprocess.run(
        [
            str(binary.etcdctl),
            f"--endpoints={','.join(endpoints)}",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            *args,
        ],
        env=binary.env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kvs(json_text: str) -> dict[str, str]:
    """The keys and values of `etcdctl get -w json` output (base64 on the wire)."""
    found: list[dict[str, Any]] = json.loads(json_text).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in found
    }


def member_list(group: Sequence[EtcdMember]) -> list[dict[str, Any]]:
    """`etcdctl --endpoints <every member's client URL> member list`: the members it reports."""
    result = etcdctl(group[0].binary, [m.client_url for m in group], "member", "list", "-w", "json")
    assert result.returncode == 0, f"member list: {result.stderr}"
    found: list[dict[str, Any]] = json.loads(result.stdout)["members"]
    return found


def endpoint_healthy(member: EtcdMember) -> bool:
    """`etcdctl endpoint health` on that one member."""
    result = etcdctl(member.binary, [member.client_url], "endpoint", "health")
    return result.returncode == 0 and "is healthy" in result.stdout + result.stderr


def assert_v3_cluster(group: Sequence[EtcdMember], timeout: float = MEMBER_READY_TIMEOUT) -> None:
    """The cluster formed: every member's /health is true, and `member list` over all their
    client URLs shows exactly these members, all started (a member not started yet has no
    name), with the peer URLs they advertise."""
    wait_healthy(group, timeout)
    listed = member_list(group)
    found = sorted((str(m.get("name", "")), tuple(m.get("peerURLs", ()))) for m in listed)
    expected = sorted((m.name, (m.peer_url,)) for m in group)
    assert found == expected, f"member list {listed}, expected {expected}"


def bootstrap(
    members: Members,
    discovery: V3Discovery,
    names: Sequence[str],
    binary: EtcdBinary,
    timeout: float = MEMBER_READY_TIMEOUT,
) -> tuple[list[EtcdMember], float]:
    """Start one v3 member per name, all at once, and check the formed cluster; the members
    and the wall time from the first start until every member served /health true."""
    began = time.monotonic()
    group = members.start(discovery, names, binary)
    wait_healthy(group, timeout)
    elapsed = time.monotonic() - began
    assert_v3_cluster(group, timeout)
    return group, elapsed


def wait_log(member: EtcdMember, text: str, timeout: float) -> None:
    wait_for(lambda: text in member.log(), timeout, f"{member} to log {text!r}", member.log)


# -- discovery services -----------------------------------------------------------------------


class DiscoveryService(Protocol):
    label: str

    def new(self, size: int) -> V3Discovery:
        """A fresh token of `size`, with the endpoints that serve it."""

    def unknown(self) -> V3Discovery:
        """A well-formed token the service never heard of."""

    def registered(self, token: str) -> dict[str, str]:
        """The member keys under the token and their values."""


class ReferenceDiscovery:
    """etcd's own recommendation for v3 discovery: a real etcd (one member on loopback) as the
    discovery endpoint, the size key put by hand."""

    label = "real-etcd"

    def __init__(self, workdir: Path, binary: EtcdBinary) -> None:
        self.etcd = BackingEtcd(workdir / "discovery-etcd", binary)

    @property
    def endpoint(self) -> str:
        """`host:port` for `--discovery-endpoints`."""
        return self.etcd.endpoint.removeprefix("http://")

    def start(self) -> ReferenceDiscovery:
        self.etcd.start()
        return self

    def stop(self) -> None:
        self.etcd.stop()

    def _etcdctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return etcdctl(self.etcd.binary, [self.etcd.endpoint], *args)

    def new(self, size: int) -> V3Discovery:
        """`etcdctl put /_etcd/registry/<token>/_config/size <size>` for a fresh token."""
        token = secrets.token_hex(16)
        result = self._etcdctl("put", size_key(token), str(size))
        assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr
        return V3Discovery(token, (self.endpoint,))

    def unknown(self) -> V3Discovery:
        return V3Discovery(secrets.token_hex(16), (self.endpoint,))

    def registered(self, token: str) -> dict[str, str]:
        result = self._etcdctl("get", "--prefix", members_prefix(token) + "/", "-w", "json")
        assert result.returncode == 0, result.stderr
        return kvs(result.stdout)


class DiscoverdDiscovery:
    """discoverd's v3 face: tokens from `POST /new?size=N`, members on its gRPC port."""

    label = "discoverd"

    def __init__(self, *servers: DiscoverdProcess) -> None:
        assert servers
        self.servers = servers

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(server.grpc_endpoint for server in self.servers)

    def new(self, size: int) -> V3Discovery:
        return V3Discovery(self.servers[0].new(size).rsplit("/", 1)[1], self.endpoints)

    def unknown(self) -> V3Discovery:
        return V3Discovery(secrets.token_hex(16), self.endpoints)

    def view(self, token: str) -> dict[str, Any]:
        """GET /api/v1/clusters/<token>."""
        status, _, body = http("GET", f"{self.servers[0].url}/api/v1/clusters/{token}", timeout=5)
        assert status == 200, body
        found: dict[str, Any] = json.loads(body)
        return found

    def registered(self, token: str) -> dict[str, str]:
        """Read through the face itself (KV/Range on the members prefix), like a member."""
        result = etcdctl(
            etcd_3_7(), self.endpoints, "get", "--prefix", members_prefix(token) + "/",
            "-w", "json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return kvs(result.stdout)
