"""Registration transactions on a real etcd: create-only, and one discovery protocol per token
enforced by etcd itself (two replicas racing a v2 and a v3 member cannot both win)."""

from __future__ import annotations

import pytest

from discoverd.directory.rules import new_token
from discoverd.models import ClusterConfig
from discoverd.store.clusters import ClusterStore, RegisterOutcome
from discoverd.store.gateway import EtcdGateway


@pytest.fixture
async def store(etcd_endpoint):
    gateway = EtcdGateway([etcd_endpoint], timeout=2)
    yield ClusterStore(gateway)
    gateway.close()


@pytest.mark.parametrize(("first", "second"), [("v2", "v3"), ("v3", "v2")])
async def test_one_protocol_per_token_in_the_transaction(store, first, second):
    token = new_token()
    lease = await store.grant_lease(600)
    assert await store.create_clusters({token: ClusterConfig(size=3, created_at=0)}, lease)
    made = await store.register(
        token, "a1", "n1=http://10.0.0.1:2380", lease, now=0.0, protocol=first
    )
    assert made.outcome is RegisterOutcome.CREATED and made.member.protocol == first
    same = await store.register(
        token, "a2", "n2=http://10.0.0.2:2380", lease, now=0.0, protocol=first
    )
    assert same.outcome is RegisterOutcome.CREATED
    other = await store.register(
        token, "a3", "n3=http://10.0.0.3:2380", lease, now=0.0, protocol=second
    )
    assert other.outcome is RegisterOutcome.MIXED
    again = await store.register(
        token, "a1", "n1=http://10.0.0.9:2380", lease, now=0.0, protocol=first
    )
    assert again.outcome is RegisterOutcome.EXISTS
    assert again.member.value == "n1=http://10.0.0.1:2380"
