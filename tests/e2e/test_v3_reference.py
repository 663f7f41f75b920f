"""The v3 harness against etcd's own recommended setup, no discoverd: a real etcd 3.7 as the
discovery endpoint, the size key put with etcdctl, 3 stock etcd 3.7 members bootstrapping with
`--discovery-token` and `--discovery-endpoints`. It anchors the discoverd tests: the member IDs
and values they expect are the ones stock members write to a real etcd."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Members, etcd_3_7
from tests.e2e.v3support import ReferenceDiscovery, bootstrap, member_key, registration

pytestmark = pytest.mark.e2e


def test_three_members_bootstrap_through_a_real_etcd(
    reference_discovery: ReferenceDiscovery, members: Members
) -> None:
    discovery = reference_discovery.new(size=3)

    group, _ = bootstrap(members, discovery, ("m1", "m2", "m3"), etcd_3_7())

    token = discovery.token
    assert reference_discovery.registered(token) == {
        member_key(token, m): registration(m) for m in group
    }
