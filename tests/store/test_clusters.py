"""Registration transactions on a real etcd: create-only, and one discovery protocol per token
enforced by etcd itself (two replicas racing a v2 and a v3 member cannot both win)."""

from __future__ import annotations

import json

import pytest

from discoverd.directory.rules import new_token
from discoverd.models import ClusterConfig
from discoverd.store import keys
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


@pytest.mark.parametrize(
    ("config", "stored"),
    [
        (ClusterConfig(size=3, created_at=1.5), {"size": 3, "created_at": 1.5}),
        (
            ClusterConfig(size=5, created_at=2.0, bootstrap_until=9.0, clients=0),
            {"size": 5, "created_at": 2.0, "bootstrap_until": 9.0, "clients": 0},
        ),
        (
            ClusterConfig(size=1, created_at=0, cidrs=("10.0.0.0/8",), allow_root=True),
            {"size": 1, "created_at": 0.0, "cidrs": ["10.0.0.0/8"], "allow_root": True},
        ),
    ],
)
async def test_a_new_token_stores_what_differs_from_the_defaults(store, config, stored):
    """Every byte of a token's config is decoded, written and sent to every watcher by etcd:
    the defaults stay out, and the config reads back whole."""
    token = new_token()
    assert await store.create_clusters({token: config}, await store.grant_lease(600))
    _, kv = await store._gateway.get(keys.cluster_config(token))
    assert json.loads(kv.value) == stored
    _, found = await store.read_cluster(token)
    assert found.config == config
