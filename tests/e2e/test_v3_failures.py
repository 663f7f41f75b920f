"""Stock etcd 3.7 members and v3 discovery when things go wrong: refused members, members that
restart or lose their data, and the backing etcd or discoverd itself going away mid-bootstrap.

Tests that take `v3_service` run twice, against a real etcd 3.7 used as the discovery endpoint
(etcd's own recommended setup: what stock members do there is the anchor) and against
discoverd's v3 face.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from tests.e2e.conftest import (
    BackingEtcd,
    EtcdMember,
    Members,
    StartDiscoverd,
    etcd_3_7,
    wait_for,
)
from tests.e2e.v3support import (
    DiscoverdDiscovery,
    DiscoveryService,
    assert_v3_cluster,
    bootstrap,
    endpoint_healthy,
    member_list,
)
from tests.support import http

pytestmark = pytest.mark.e2e

NAMES = ("m1", "m2", "m3")
REFUSAL_TIMEOUT = 30.0
# etcd's v3 discovery client backs off 1 s, 2 s, 4 s, 8 s, ... after a failed registration
RECOVERY_TIMEOUT = 60.0
REGISTER_FAILED = "failed to register members itself to the discovery service"
RAFT_LOG_LOST = "Was the raft log corrupted, truncated, or lost?"
ALREADY_EXISTS = "code = AlreadyExists"


# -- members that must be refused -------------------------------------------------------------


def test_fourth_member_exits_cluster_is_full(
    v3_service: DiscoveryService, members: Members
) -> None:
    discovery = v3_service.new(size=3)
    bootstrap(members, discovery, NAMES, etcd_3_7())

    fourth = members.add("m4", discovery, etcd_3_7()).start()

    status = fourth.wait_exit(REFUSAL_TIMEOUT)
    log = fourth.log()
    assert status != 0, log
    assert "discovery: cluster is full" in log, log
    assert len(v3_service.registered(discovery.token)) == 3  # it checked before registering


def test_unknown_token_exits_size_key_not_found(
    v3_service: DiscoveryService, members: Members
) -> None:
    member = members.add("m1", v3_service.unknown(), etcd_3_7()).start()

    status = member.wait_exit(REFUSAL_TIMEOUT)
    log = member.log()
    assert status != 0, log
    assert "discovery: size key not found" in log, log


# -- members that restart ---------------------------------------------------------------------


def test_member_restarted_mid_bootstrap_joins(
    v3_service: DiscoveryService, members: Members
) -> None:
    """m1 registers, waits for its peers, and is killed (a reboot) before they come: it has no
    WAL yet, so it runs discovery again and Puts the same key with the same value (its ID
    hashes its peer URLs and the token). A real etcd takes the identical Put; the member must
    then take its place in the cluster like the others."""
    discovery = v3_service.new(size=3)
    binary = etcd_3_7()
    m1 = members.add("m1", discovery, binary).start()
    wait_for(
        lambda: len(v3_service.registered(discovery.token)) == 1,
        REFUSAL_TIMEOUT,
        "m1 to register",
        m1.log,
    )
    m1.stop(signal.SIGKILL)
    m1.start()
    group = [m1, *members.start(discovery, ("m2", "m3"), binary)]

    def formed_or_refused() -> bool:
        """Done when all three are healthy, or as soon as m1's Put was refused."""
        return REGISTER_FAILED in m1.log() or all(member.healthy() for member in group)

    wait_for(formed_or_refused, RECOVERY_TIMEOUT, "the cluster to form", m1.log, 0.2)
    assert REGISTER_FAILED not in m1.log(), m1.log()
    assert_v3_cluster(group)
    assert len(v3_service.registered(discovery.token)) == 3


def _lose_data_dir(member: EtcdMember) -> None:
    """Stop `member` by pid, delete its data dir, start it again with the same flags: no WAL,
    so it runs discovery again, under the same member ID and with the same value."""
    member.stop()
    shutil.rmtree(member.data_dir)
    member.start()


def _assert_unharmed(others: list[EtcdMember], names: set[str]) -> None:
    for member in others:
        assert endpoint_healthy(member), member.log()
    assert {str(listed["name"]) for listed in member_list(others)} == names


def test_member_that_lost_its_data_dir_panics_and_the_others_stay_healthy(
    v3_service: DiscoveryService, members: Members
) -> None:
    """What the stock 3.7 binary does, with a real etcd as the discovery endpoint and with
    discoverd (within --retry-window): its identical Put is taken, it finds itself among the
    first 3 and starts a fresh raft log as a "new" member; the leader's first heartbeat commits
    past that log and m1 panics ("tocommit(8) is out of range [lastIndex(3)]. Was the raft log
    corrupted, truncated, or lost?") and exits with 2. The other two are not harmed."""
    discovery = v3_service.new(size=3)
    group, _ = bootstrap(members, discovery, NAMES, etcd_3_7())
    m1, others = group[0], group[1:]

    _lose_data_dir(m1)

    status = m1.wait_exit(REFUSAL_TIMEOUT)
    log = m1.log()
    assert status == 2, log
    assert RAFT_LOG_LOST in log, log
    _assert_unharmed(others, set(NAMES))
    assert len(v3_service.registered(discovery.token)) == 3


def test_member_that_lost_its_data_dir_past_the_retry_window_is_refused(
    etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """Past --retry-window (here 1 ms) discoverd refuses the identical Put (ALREADY_EXISTS).
    Unlike v2 (where etcd exits on a duplicate), a stock 3.7 member retries a refused Put
    forever with doubling backoff (capped at 256 s): it never serves, and never harms the
    others."""
    service = DiscoverdDiscovery(start_discoverd([etcd_endpoint], "--retry-window", "1ms"))
    discovery = service.new(size=3)
    group, _ = bootstrap(members, discovery, NAMES, etcd_3_7())
    m1, others = group[0], group[1:]

    _lose_data_dir(m1)

    wait_for(lambda: ALREADY_EXISTS in m1.log(), REFUSAL_TIMEOUT, "m1's Put to be refused", m1.log)
    assert REGISTER_FAILED in m1.log(), m1.log()
    assert m1.running() and not m1.healthy()
    _assert_unharmed(others, set(NAMES))
    assert len(service.registered(discovery.token)) == 3


# -- outages mid-bootstrap --------------------------------------------------------------------


def test_backing_etcd_paused_mid_bootstrap(
    backing_etcd: BackingEtcd, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """m1 registers; the backing etcd is frozen (SIGSTOP by pid); m2 and m3 come and their
    registrations fail (discoverd answers UNAVAILABLE after --etcd-timeout); etcd resumes
    (SIGCONT) and the members' retries form the cluster. A Put answered UNAVAILABLE may still
    have reached etcd and be committed when it resumes: its identical retry must be taken
    (it met ALREADY_EXISTS, and the member retried forever, before main's 89832b1)."""
    backing_etcd.start()
    server = start_discoverd([backing_etcd.endpoint])
    service = DiscoverdDiscovery(server)
    discovery = service.new(size=3)
    binary = etcd_3_7()
    m1 = members.add("m1", discovery, binary).start()
    wait_for(lambda: len(service.registered(discovery.token)) == 1, REFUSAL_TIMEOUT, "m1")
    assert backing_etcd.process is not None
    etcd_pid = backing_etcd.process.pid

    os.kill(etcd_pid, signal.SIGSTOP)
    try:
        m2, m3 = members.start(discovery, ("m2", "m3"), binary)
        wait_for(lambda: REGISTER_FAILED in m2.log(), RECOVERY_TIMEOUT, "m2's Put to fail", m2.log)
        assert http("GET", server.url + "/health", timeout=10)[0] == 503
    finally:
        os.kill(etcd_pid, signal.SIGCONT)

    group = [m1, m2, m3]
    wait_for(
        lambda: _refused(group) or all(member.healthy() for member in group),
        RECOVERY_TIMEOUT,
        "the cluster to form",
        lambda: "\n".join(member.log() for member in group),
        0.2,
    )
    assert not _refused(group), "\n".join(member.log() for member in _refused(group))
    assert_v3_cluster(group)
    assert len(service.registered(discovery.token)) == 3


def _refused(group: list[EtcdMember]) -> list[EtcdMember]:
    """The members whose identical retry was refused as a duplicate (stock etcd then retries
    forever): checked while waiting, so that failure shows at once, not after a timeout."""
    return [member for member in group if ALREADY_EXISTS in member.log()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_discoverd_restarted_mid_bootstrap(
    sig: signal.Signals, etcd_endpoint: str, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """m1 and m2 register and wait on their watch; discoverd is stopped by pid and started
    again on the same ports; the members re-create their watches, m3 comes, and the cluster
    forms."""
    server = start_discoverd([etcd_endpoint])
    service = DiscoverdDiscovery(server)
    discovery = service.new(size=3)
    binary = etcd_3_7()
    m1, m2 = members.start(discovery, ("m1", "m2"), binary)
    wait_for(lambda: len(service.registered(discovery.token)) == 2, REFUSAL_TIMEOUT, "m1, m2")

    server.stop(sig)
    assert m1.running() and m2.running()
    server.start()
    m3 = members.add("m3", discovery, binary).start()

    assert_v3_cluster([m1, m2, m3], RECOVERY_TIMEOUT)
