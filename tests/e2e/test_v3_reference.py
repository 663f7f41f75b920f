"""The v3 harness against etcd's own recommended setup, no discoverd: a real etcd 3.7 as the
discovery endpoint, the size key put with etcdctl, 3 stock etcd 3.7 members bootstrapping with
`--discovery-token` and `--discovery-endpoints`. It anchors what the discoverd tests expect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Members, V3Discovery, etcd_3_7
from tests.e2e.v3support import ReferenceDiscovery, bootstrap, member_key

pytestmark = pytest.mark.e2e


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ReferenceDiscovery]:
    discovery = ReferenceDiscovery.create(tmp_path, etcd_3_7())
    try:
        yield discovery.start()
    finally:
        discovery.stop()


def test_three_members_bootstrap_through_a_real_etcd(
    reference: ReferenceDiscovery, members: Members
) -> None:
    token = reference.new(size=3)
    binary = etcd_3_7()

    group, _ = bootstrap(members, V3Discovery(token, (reference.endpoint,)), ("m1", "m2", "m3"), binary)

    # The registry holds what the reference note says: one key per member ID, `name=peerURL`.
    assert reference.registered(token) == {
        member_key(token, m): f"{m.name}={m.peer_url}" for m in group
    }
