"""v3 discovery helpers for the e2e tests and the bench's anchor: etcdctl runs, the member ID a
stock etcd derives, the "cluster formed" check, and etcd's own recommended setup (a real etcd
used as the discovery endpoint, the size key put by hand with etcdctl).

The registry keys are spelled here as etcd's v3 discovery client spells them (the wire
contract under test), not taken from discoverd.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import (
    MEMBER_READY_TIMEOUT,
    BackingEtcd,
    EtcdBinary,
    EtcdMember,
    Members,
    V3Discovery,
    wait_for,
    wait_healthy,
)

REGISTRY = "/_etcd/registry"
ETCDCTL_TIMEOUT = 20.0


def size_key(token: str) -> str:
    return f"{REGISTRY}/{token}/_config/size"


def members_prefix(token: str) -> str:
    return f"{REGISTRY}/{token}/members"


def member_id(peer_urls: Sequence[str], token: str) -> str:
    """The ID etcd gives a member bootstrapping with v3 discovery: the first 8 bytes of
    sha1(sorted peer URLs + token), big-endian, in hex without padding."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()  # noqa: S324
    return f"{int.from_bytes(digest[:8], 'big'):x}"


def member_key(token: str, member: EtcdMember) -> str:
    return f"{members_prefix(token)}/{member_id([member.peer_url], token)}"


def etcdctl(
    binary: EtcdBinary,
    endpoints: Sequence[str],
    *args: str,
    timeout: float = ETCDCTL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """One etcdctl command (v3 API) on `endpoints`; never raises on a non-zero exit."""
    env = binary.env()
    env["ETCDCTL_API"] = "3"
    return subprocess.run(
        [
            str(binary.etcdctl),
            f"--endpoints={','.join(endpoints)}",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def member_list(group: Sequence[EtcdMember]) -> list[dict[str, object]]:
    """`etcdctl --endpoints <every member's client URL> member list`: the members it reports."""
    result = etcdctl(group[0].binary, [m.client_url for m in group], "member", "list", "-w", "json")
    assert result.returncode == 0, f"member list: {result.stderr}"
    found: list[dict[str, object]] = json.loads(result.stdout)["members"]
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
    started = sorted((str(m.get("name", "")), tuple(m.get("peerURLs", ()))) for m in listed)  # type: ignore[call-overload]
    expected = sorted((m.name, (m.peer_url,)) for m in group)
    assert started == expected, f"member list {listed}, expected {expected}"


@dataclass
class ReferenceDiscovery:
    """etcd's own recommendation for v3 discovery: a real etcd (here one 3.7 member on
    loopback) as the discovery endpoint, the size key put by hand."""

    etcd: BackingEtcd

    @classmethod
    def create(cls, workdir: Path, binary: EtcdBinary) -> ReferenceDiscovery:
        return cls(BackingEtcd(workdir / "discovery-etcd", binary))

    @property
    def endpoint(self) -> str:
        """`host:port` for `--discovery-endpoints`."""
        return self.etcd.endpoint.removeprefix("http://")

    def start(self) -> ReferenceDiscovery:
        self.etcd.start()
        return self

    def stop(self) -> None:
        self.etcd.stop()

    def new(self, size: int) -> str:
        """A fresh token: `etcdctl put /_etcd/registry/<token>/_config/size <size>`."""
        token = secrets.token_hex(16)
        result = etcdctl(self.etcd.binary, [self.etcd.endpoint], "put", size_key(token), str(size))
        assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr
        return token

    def registered(self, token: str) -> dict[str, str]:
        """The member keys and values under the token."""
        result = etcdctl(
            self.etcd.binary, [self.etcd.endpoint], "get", "--prefix", members_prefix(token) + "/",
            "-w", "json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return _kvs(result.stdout)


def _kvs(json_text: str) -> dict[str, str]:
    import base64

    kvs = json.loads(json_text).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in kvs
    }


def bootstrap(
    members: Members,
    discovery: V3Discovery,
    names: Sequence[str],
    binary: EtcdBinary,
    timeout: float = MEMBER_READY_TIMEOUT,
) -> tuple[list[EtcdMember], float]:
    """Start one v3 member per name, all at once, and wait for the formed cluster; the members
    and the wall time from the first start to every member healthy."""
    began = time.monotonic()
    group = members.start(discovery, names, binary)
    wait_healthy(group, timeout)
    elapsed = time.monotonic() - began
    assert_v3_cluster(group, timeout)
    return group, elapsed


def wait_log(member: EtcdMember, text: str, timeout: float) -> None:
    wait_for(lambda: text in member.log(), timeout, f"{member} to log {text!r}", member.log)
