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
# Remove the xfails that cite it once discoverd takes a Put identical to the stored one.
IDENTICAL_PUT_BUG = (
    "discoverd bug: KV/Put of an existing member key with the SAME value is refused "
    "(ALREADY_EXISTS 'Key already exists'); a real etcd takes it. Stock etcd retries a refused "
    "Put forever with backoff, so a member whose Put is retried (it restarted mid-bootstrap, "
    "or its first Put was answered UNAVAILABLE but committed) never joins"
)


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
    v3_service: DiscoveryService, members: Members, request: pytest.FixtureRequest
) -> None:
    """m1 registers, waits for its peers, and is killed (a reboot) before they come: it has no
    WAL yet, so it runs discovery again and Puts the same key with the same value (its ID
    hashes its peer URLs and the token). A real etcd takes the identical Put; the member must
    then take its place in the cluster like the others."""
    if v3_service.label == "discoverd":
        request.applymarker(pytest.mark.xfail(strict=True, reason=IDENTICAL_PUT_BUG))
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


def test_member_that_lost_its_data_dir_leaves_the_others_healthy(
    v3_service: DiscoveryService, members: Members
) -> None:
    """m1 of a formed cluster is stopped, its data dir deleted, and started again with the
    same flags: no WAL, so it runs discovery again under its old member ID.

    What the stock 3.7 binary does: with a real etcd as discovery endpoint its identical Put is
    taken, it sees itself among the first 3 and starts a fresh raft log as a "new" member;
    the leader's first heartbeat then commits past that log and m1 panics ("tocommit(N) is
    out of range [lastIndex(3)]. Was the raft log corrupted, truncated, or lost?", exit 2).
    With discoverd today, the Put is refused (ALREADY_EXISTS) and m1 retries it forever with
    growing backoff, never serving. Either way the other two are not harmed."""
    discovery = v3_service.new(size=3)
    group, _ = bootstrap(members, discovery, NAMES, etcd_3_7())
    m1, others = group[0], group[1:]
    before = {member["name"] for member in member_list(others)}

    m1.stop()
    shutil.rmtree(m1.data_dir)
    m1.start()

    def settled() -> bool:
        return not m1.running() or REGISTER_FAILED in m1.log()

    wait_for(settled, REFUSAL_TIMEOUT, "m1 to panic or be refused", m1.log, 0.2)
    log = m1.log()
    if v3_service.label == "real-etcd":
        assert m1.wait_exit(REFUSAL_TIMEOUT) == 2, log
        assert RAFT_LOG_LOST in log, log
    elif m1.running():  # discoverd today: refused, retried
        assert ALREADY_EXISTS in log, log
        assert not m1.healthy()
    else:  # discoverd once an identical Put is taken: like the real etcd
        assert RAFT_LOG_LOST in log, log
    for member in others:
        assert endpoint_healthy(member), member.log()
    assert {member["name"] for member in member_list(others)} == before
    assert len(v3_service.registered(discovery.token)) == 3


# -- outages mid-bootstrap --------------------------------------------------------------------


def test_backing_etcd_paused_mid_bootstrap(
    backing_etcd: BackingEtcd, start_discoverd: StartDiscoverd, members: Members
) -> None:
    """m1 registers; the backing etcd is frozen (SIGSTOP by pid); m2 and m3 come and their
    registrations fail (discoverd answers UNAVAILABLE after --etcd-timeout); etcd resumes
    (SIGCONT) and the members' retries form the cluster."""
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
    refused = _refused(group)
    if refused:  # racy: only when a frozen-time Put reached etcd before it froze
        pytest.xfail(f"{IDENTICAL_PUT_BUG} ({', '.join(member.name for member in refused)})")
    assert_v3_cluster(group)
    assert len(service.registered(discovery.token)) == 3


def _refused(group: list[EtcdMember]) -> list[EtcdMember]:
    """The members whose registration was refused as a duplicate: their earlier Put, answered
    UNAVAILABLE while etcd was frozen, was committed when it resumed, and the identical retry
    met ALREADY_EXISTS (stock etcd then retries forever)."""
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
