"""Real etcd clusters bootstrap through a real `discoverd serve`: the happy paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from discoverd.store.embedded import free_port
from tests.e2e.conftest import (
    ETCD_BINARIES,
    V3_ETCD_BINARIES,
    Members,
    StartDiscoverd,
    assert_cluster,
    metric,
    registrations,
    wait_for,
    wait_healthy,
)
from tests.support import http, pid_running, wait_until

pytestmark = pytest.mark.e2e


# etcd 3.6 still has v2 discovery (deprecated); 3.7 has none (tests/e2e/test_v3_*.py).
V2_BOOTSTRAP = {**ETCD_BINARIES, "etcd-3.6": V3_ETCD_BINARIES["etcd-3.6"]}


@pytest.mark.parametrize("binary_name", list(V2_BOOTSTRAP))
def test_three_members_bootstrap(
    binary_name: str, etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    binary = V2_BOOTSTRAP[binary_name]()
    server = start_discoverd([etcd_endpoint])
    url = server.new(size=3)

    group = members.start(url, binary=binary)

    assert_cluster(group)
    assert sorted(str(node["value"]).partition("=")[0] for node in registrations(url)) == [
        "m1",
        "m2",
        "m3",
    ]


PUBLIC_URL = "http://discoverd.test:8087"  # .test never resolves: only the proxies reach it


def test_members_split_between_two_replicas(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """Two discoverd replicas on one backing etcd, behind one public URL. m1 and m2 reach
    replica A, m3 replica B (each member's `--discovery-proxy` plays the load balancer), all
    with the same discovery URL. The cluster forms, and each replica took its registrations."""
    replica_a = start_discoverd([etcd_endpoint], "--public-url", PUBLIC_URL)
    replica_b = start_discoverd([etcd_endpoint], "--public-url", PUBLIC_URL)
    url = replica_a.new(size=3)
    assert url.startswith(PUBLIC_URL + "/")

    group = [
        members.add(name, url, extra=[f"--discovery-proxy={replica.url}"]).start()
        for name, replica in (("m1", replica_a), ("m2", replica_a), ("m3", replica_b))
    ]

    assert_cluster(group)
    assert metric(replica_a, "discoverd_http_requests_total", method="PUT", status="201") == 2
    assert metric(replica_b, "discoverd_http_requests_total", method="PUT", status="201") == 1


def test_per_replica_urls_for_one_token_split_the_cluster_id(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """The same token reached through two replica-specific URLs is NOT one cluster to etcd:
    etcd uses the full discovery URL as --initial-cluster-token, which goes into every member
    ID and so into the cluster ID. m3 (replica B's URL) computes other IDs than m1 and m2
    (replica A's URL) and their peers reject it. discoverd registered all three correctly: this
    is why replicas must sit behind one public URL (test above)."""
    replica_a = start_discoverd([etcd_endpoint])
    replica_b = start_discoverd([etcd_endpoint])
    url_a = replica_a.new(size=3)
    url_b = replica_b.url + url_a.removeprefix(replica_a.url)

    m1, m2, m3 = members.start([url_a, url_a, url_b])

    wait_healthy([m1, m2])  # two of three: a quorum of the members that agree
    wait_for(lambda: "cluster ID mismatch" in m3.log(), 30, "m3 to be rejected", m3.log)
    assert not m3.healthy()
    assert len(registrations(url_a)) == 3


def _children(pid: int) -> set[int]:
    """The child processes of `pid`, across all its threads (each task has its own list)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _discoverd_new(server_url: str, size: int) -> str:
    """A token minted with the `discoverd new` command."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "discoverd",
            "new",
            "-q",
            "--server",
            server_url,
            "--size",
            str(size),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().strip()


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(),
    reason="LOUD: needs Linux /proc to find the embedded etcd child; the orphan check is NOT run",
)
@pytest.mark.parametrize(
    ("sig", "exit_status"),
    [
        pytest.param(signal.SIGTERM, 0, id="SIGTERM"),  # stopped by discoverd itself
        pytest.param(signal.SIGKILL, -signal.SIGKILL, id="SIGKILL"),  # by the kernel (pdeathsig)
    ],
)
def test_embedded_etcd_bootstraps_and_dies_with_discoverd(
    sig: signal.Signals, exit_status: int, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """`discoverd serve` with no --etcd: its own etcd child serves a bootstrap, goes away with
    discoverd (no orphan), and its data outlives it: a new discoverd on the same --data-dir
    still has the token."""
    server = start_discoverd()  # no --etcd: embedded etcd under --data-dir
    assert server.process is not None
    status, _, body = http("GET", server.url + "/health")
    assert status == 200, body
    children = _children(server.process.pid)
    etcd_pids = [pid for pid in children if _exe(pid).endswith("/etcd")]
    assert len(etcd_pids) == 1, f"no embedded etcd among the children {children}"
    etcd_pid = etcd_pids[0]

    url = _discoverd_new(server.url, 3)
    group = members.start(url)
    assert_cluster(group)

    assert server.stop(sig) == exit_status, server.log()
    wait_until(lambda: not pid_running(etcd_pid), 10, f"embedded etcd (pid {etcd_pid}) to exit")

    again = start_discoverd(port=server.port)  # same port, so the same --data-dir
    assert again.data_dir == server.data_dir
    assert sorted(str(node["value"]).partition("=")[0] for node in registrations(url)) == [
        "m1",
        "m2",
        "m3",
    ]


def test_bootstrap_under_a_path_prefix(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """--public-url with a path: the routes live under it, and members given the discovery
    URL with a trailing slash (etcd keeps it on the directory GET and the wait) bootstrap."""
    port = free_port()
    server = start_discoverd(
        [etcd_endpoint], "--public-url", f"http://127.0.0.1:{port}/disc/v2", port=port
    )
    status, _, body = http("POST", f"{server.url}/disc/v2/new?size=3")
    assert status == 200, body
    url = body.decode()
    assert url.startswith(f"{server.url}/disc/v2/"), url

    group = members.start(url + "/")

    assert_cluster(group)
    assert len(registrations(url)) == 3
