"""Real etcd members against discoverd when things go wrong: refused members, and the backing
etcd or discoverd itself going away in the middle of a bootstrap."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence

import pytest

from tests.e2e.conftest import (
    ETCD_BINARIES,
    BackingEtcd,
    EtcdMember,
    Members,
    StartDiscoverd,
    assert_cluster,
    metric,
    registrations,
    wait_for,
    wait_registered,
)
from tests.support import http

pytestmark = pytest.mark.e2e

RECOVERY_TIMEOUT = 60.0  # etcd's discovery client backs off 2 s, 4 s, 8 s, ... between retries
REFUSAL_TIMEOUT = 30.0


def _answer(url: str) -> tuple[int, dict[str, str], bytes] | None:
    try:
        return http("GET", url, timeout=2)
    except OSError:
        return None


# -- members that must be refused -------------------------------------------------------------

Refusal = Callable[[Members, str, Sequence[EtcdMember]], EtcdMember]


def _fourth_member(members: Members, url: str, cluster: Sequence[EtcdMember]) -> EtcdMember:
    """A 4th member on a token whose 3 places are taken, told not to fall back to a proxy."""
    return members.add("m4", url, extra=["--discovery-fallback=exit"]).start()


def _member_without_its_data(
    members: Members, url: str, cluster: Sequence[EtcdMember]
) -> EtcdMember:
    """m1 stopped, its data dir deleted, then started again with the same name, URLs and
    discovery URL: the same member ID, whose registration exists already."""
    m1 = cluster[0]
    m1.stop()
    shutil.rmtree(m1.data_dir)
    return m1.start()


@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        pytest.param(_fourth_member, "discovery: cluster is full", id="cluster-full"),
        pytest.param(
            _member_without_its_data,
            "member has been registered with discovery service",  # ErrDuplicateID (412/105)
            id="duplicate-id",
        ),
    ],
)
def test_member_is_refused(
    refusal: Refusal,
    message: str,
    etcd_endpoint: str,
    start_discoverd: StartDiscoverd,
    members: Members,
) -> None:
    # A member's identical retry succeeds within --retry-window of its registration; past it
    # (here at once) the same registration from a member that lost its data dir is refused.
    server = start_discoverd([etcd_endpoint], "--retry-window", "1ms")
    url = server.new(size=3)
    cluster = members.start(url)
    assert_cluster(cluster)

    refused = refusal(members, url, cluster)

    status = refused.wait_exit(REFUSAL_TIMEOUT)
    log = refused.log()
    assert status != 0, log
    assert message in log, log
    assert len(registrations(url)) == 3  # nothing was added or overwritten


@pytest.mark.parametrize("binary_name", list(ETCD_BINARIES))
def test_fourth_member_falls_back_to_a_proxy(
    binary_name: str, etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """etcd 3.4/3.5's default --discovery-fallback=proxy: a 4th member on a full token reads
    the first 3 registrations (without registering) and serves as a proxy to them."""
    binary = ETCD_BINARIES[binary_name]()
    server = start_discoverd([etcd_endpoint])
    url = server.new(size=3)
    cluster = members.start(url, binary=binary)
    assert_cluster(cluster)

    proxy = members.add("m4", url, binary=binary).start()

    def proxies() -> bool:
        assert proxy.running(), proxy.log()
        answer = _answer(proxy.client_url + "/version")
        return answer is not None and answer[0] == 200 and b"etcdserver" in answer[2]

    wait_for(proxies, REFUSAL_TIMEOUT, "m4 to proxy to the cluster", proxy.log, 0.2)
    assert "falling back to proxy" in proxy.log(), proxy.log()
    assert len(registrations(url)) == 3


# -- outages mid-bootstrap --------------------------------------------------------------------


def test_backing_etcd_restarted_mid_bootstrap(
    backing_etcd: BackingEtcd, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """2 of 3 members registered and waiting; the backing etcd stops: discoverd answers 503 (a
    v2 error, which etcd retries), the 3rd member starts and backs off; the backing etcd comes
    back (same data, same ports) and the cluster still forms."""
    backing_etcd.start()
    server = start_discoverd([backing_etcd.endpoint])
    url = server.new(size=3)
    m1, m2 = members.start(url, names=("m1", "m2"))
    wait_registered(url, 2)

    backing_etcd.stop()

    last: list[tuple[int, dict[str, str], bytes] | None] = [None]

    def unavailable() -> bool:
        last[0] = _answer(url + "/_config/size")
        return last[0] is not None and last[0][0] == 503

    wait_for(unavailable, 5, "discoverd to answer 503 with its etcd down", lambda: str(last[0]))
    assert last[0] is not None
    _, headers, body = last[0]
    assert headers["Content-Type"].startswith("application/json"), headers
    error = json.loads(body)
    assert set(error) == {"errorCode", "message", "cause", "index"}, error
    assert error["errorCode"] == 300, error  # raft internal error: etcd's client retries 5xx

    m3 = members.add("m3", url).start()
    wait_for(
        lambda: m3.running() and "failed to get from discovery server" in m3.log(),
        20,
        "m3 to get an error from discoverd and back off",
        m3.log,
    )

    backing_etcd.start()

    assert_cluster([m1, m2, m3], timeout=RECOVERY_TIMEOUT)
    assert len(registrations(url)) == 3


def test_discoverd_restarted_mid_bootstrap(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """2 of 3 members registered and long-polling; discoverd is stopped (SIGTERM) and a new one
    starts on the same port: no registration is lost and the 3rd member completes the cluster."""
    first = start_discoverd([etcd_endpoint])
    url = first.new(size=3)
    m1, m2 = members.start(url, names=("m1", "m2"))
    wait_registered(url, 2)
    wait_for(
        lambda: metric(first, "discoverd_waits_in_flight") == 2,
        30,
        "m1 and m2 to wait for the rest of the cluster",
        lambda: f"{m1.log()}\n{m2.log()}\n{first.log()}",
    )

    stopping = time.monotonic()
    assert first.stop() == 0, first.log()
    # The held waits are released (an empty 200) rather than holding the shutdown for its
    # 5 s timeout.
    assert time.monotonic() - stopping < 5, first.log()
    second = start_discoverd([etcd_endpoint], port=first.port)
    assert len(registrations(url)) == 2
    m3 = members.add("m3", url).start()

    assert_cluster([m1, m2, m3], timeout=RECOVERY_TIMEOUT)
    assert metric(second, "discoverd_http_requests_total", method="PUT", status="201") == 1


def test_idle_waits_end_empty_and_members_poll_again(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """With --wait-timeout 1s, the waiting members get several empty 200s (a long-poll
    keepalive, which etcd's client re-sends at once, without an error or a backoff) before
    the 3rd member registers; the cluster forms."""
    server = start_discoverd([etcd_endpoint], "--wait-timeout", "1s")
    url = server.new(size=3)
    m1, m2 = members.start(url, names=("m1", "m2"))
    wait_registered(url, 2)

    def directory_gets() -> float:
        return metric(
            server, "discoverd_http_requests_total", route="/{token}", method="GET", status="200"
        )

    before = directory_gets()
    wait_for(
        lambda: directory_gets() >= before + 6,
        20,
        "three idle waits per member",
        lambda: f"{m1.log()}\n{server.log()}",
        0.2,
    )
    m3 = members.add("m3", url).start()

    assert_cluster([m1, m2, m3])
    for member in (m1, m2):
        assert "error while waiting for peers" not in member.log(), member.log()
