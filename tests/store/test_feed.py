"""The watch feed keeps a registry in step with a real etcd, and starts over after a break."""

from __future__ import annotations

import asyncio
import collections
import time

from discoverd.models import ClusterConfig
from discoverd.store.clusters import ClusterStore, RegisterOutcome
from discoverd.store.embedded import EmbeddedEtcd
from discoverd.store.feed import RegistryFeed
from discoverd.store.gateway import EtcdGateway
from discoverd.store.registry import Registry


async def eventually(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_feed_follows_writes_and_resyncs(etcd_endpoint):
    gateway = EtcdGateway([etcd_endpoint], timeout=2)
    registry = Registry()
    feed = RegistryFeed(gateway, registry, asyncio.get_running_loop())
    store = ClusterStore(gateway)
    feed.start()
    try:
        await eventually(lambda: registry.synced)
        lease = await store.grant_lease(600)
        token = "ab" * 16
        revision = await store.create_clusters({token: ClusterConfig(size=2, created_at=0)}, lease)
        assert revision is not None
        await asyncio.wait_for(registry.wait_revision(revision), 5)
        assert registry.cluster(token).config.size == 2

        # Creating the same token again writes nothing.
        assert (
            await store.create_clusters({token: ClusterConfig(size=9, created_at=0)}, lease) is None
        )

        first = await store.register(token, "a1", "n1=http://10.0.0.1:2380", lease, now=0.0)
        again = await store.register(token, "a1", "other=http://10.0.0.9:2380", lease, now=0.0)
        missing = await store.register("cd" * 16, "a1", "n1=http://10.0.0.1:2380", lease, now=0.0)
        assert first.outcome is RegisterOutcome.CREATED
        assert again.outcome is RegisterOutcome.EXISTS
        assert again.member.value == "n1=http://10.0.0.1:2380"  # the first registration stays
        assert missing.outcome is RegisterOutcome.NO_TOKEN

        # A dropped watch: the feed reads everything again and misses nothing written meanwhile.
        feed.restart_watch()
        second = await store.register(token, "a2", "n2=http://10.0.0.2:2380", lease, now=0.0)
        await asyncio.wait_for(registry.wait_revision(second.revision), 5)
        members = registry.cluster(token).members
        assert [m.member_id for m in members] == ["a1", "a2"]
        assert [m.created for m in members] == [first.revision, second.revision]
        await eventually(lambda: feed.resyncs >= 1 and registry.synced)
    finally:
        await asyncio.to_thread(feed.stop)
        gateway.close()


async def test_a_silently_stalled_watch_is_restarted(etcd_endpoint, monkeypatch):
    from discoverd.store import feed as feed_module

    monkeypatch.setattr(feed_module, "PROBE_INTERVAL", 0.05)
    gateway = EtcdGateway([etcd_endpoint], timeout=2)
    registry = Registry()
    feed = RegistryFeed(gateway, registry, asyncio.get_running_loop())
    dropping = {"on": False}
    original = feed._post

    def lossy(callback, *args):
        # A middlebox that swallows the watch stream's events until the feed restarts the
        # watch. Stopping on the restart itself, not at some moment of the test, is what makes
        # this deterministic: the event may reach the watch thread at any time after the write.
        if dropping["on"] and feed.resyncs == 0 and getattr(callback, "__name__", "") == "apply":
            return
        original(callback, *args)

    feed._post = lossy
    feed.start()
    probe = asyncio.create_task(feed.probe_forever())
    try:
        await eventually(lambda: registry.synced)
        dropping["on"] = True
        store = ClusterStore(gateway)
        token = "ef" * 16
        lease = await store.grant_lease(600)
        await store.create_clusters({token: ClusterConfig(size=1, created_at=0)}, lease)
        # Only a restart (a full read) can bring the token in: its watch event was swallowed.
        await eventually(lambda: registry.cluster(token) is not None)
        assert feed.resyncs >= 1
    finally:
        probe.cancel()
        await asyncio.to_thread(feed.stop)
        gateway.close()


async def test_the_probe_reads_every_key_only_when_the_view_lags(tmp_path, monkeypatch):
    """A probe reads etcd's revision (one key lookup); the read of the newest revision under
    the prefix, which costs etcd every key there, runs only when the view has not reached the
    revision of the probe before: never while the view is current, and after a write outside
    the prefix (which it finds is no stall)."""
    from discoverd.store import feed as feed_module

    monkeypatch.setattr(feed_module, "PROBE_INTERVAL", 0.02)
    etcd = EmbeddedEtcd(tmp_path / "etcd", name="probe")  # its own: no other test writes here
    endpoint = await asyncio.to_thread(etcd.start)
    gateway = EtcdGateway([endpoint], timeout=2)
    calls: collections.Counter[str] = collections.Counter()
    for name in ("revision", "newest_revision"):
        real = getattr(gateway, name)

        async def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return await _real(*args)

        monkeypatch.setattr(gateway, name, counted)
    registry = Registry()
    feed = RegistryFeed(gateway, registry, asyncio.get_running_loop())
    feed.start()
    probe = asyncio.create_task(feed.probe_forever())
    try:
        await eventually(lambda: registry.synced)
        store = ClusterStore(gateway)
        lease = await store.grant_lease(600)
        for n in range(3):
            config = ClusterConfig(size=3, created_at=0)
            revision = await store.create_clusters({f"{n:032x}": config}, lease)
            await asyncio.wait_for(registry.wait_revision(revision), 5)
        full_reads, probes = calls["newest_revision"], calls["revision"]
        await eventually(lambda: calls["revision"] >= probes + 10)
        assert calls["newest_revision"] == full_reads  # the view is current: no full read

        await gateway.call(lambda c: c.put("/elsewhere/key", "1"))  # not under the prefix
        await eventually(lambda: calls["newest_revision"] > full_reads)
        probes = calls["revision"]
        await eventually(lambda: calls["revision"] >= probes + 10)
        assert feed.resyncs == 0 and registry.synced  # found to be no stall
    finally:
        probe.cancel()
        await asyncio.to_thread(feed.stop)
        gateway.close()
        await asyncio.to_thread(etcd.stop)
