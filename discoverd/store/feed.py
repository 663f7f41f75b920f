"""Keeps the `Registry` in step with etcd: one full read, then one watch of the whole registry.

A single thread per process reads everything under `keys.ROOT` at one revision, then watches
from the next revision and hands each watch response to the event loop whole. Any break (etcd
gone, watch compacted or cancelled) marks the view stale, and the loop starts over with a full
read, so no change is ever missed. However many clients wait, this is one etcd watch.

A probe task asks etcd twice a second, each answer due within PROBE_TIMEOUT: a watch on a frozen
or partitioned etcd can hang without an error, and a stale view must not keep serving as if it
were current. Two failed probes in a row mark it stale: within ~2 s of etcd going silent.

A probe reads etcd's revision (one key lookup). Only when the view has not reached the revision
of the probe before does it also read the newest revision under the prefix, which costs etcd a
read of every key there: the view is current on a dedicated etcd, where that read twice a
second cost etcd a fifth of a core at 30,000 tokens, idle, and more with every token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from discoverd.errors import Unavailable
from discoverd.store import keys
from discoverd.store.gateway import EtcdGateway, EtcdRejected, WatchStream, decode_kv
from discoverd.store.registry import Event, Registry

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 1.0  # a probe that takes longer has failed (a frozen etcd accepts, never answers)
PROBE_FAILURES = 2  # consecutive failed probes before the view is called stale
STALL_PROBES = 3  # probes in a row with a change the watch did not deliver
BACKOFF_MAX = 2.0


class _Resync(Exception):
    """The watch cannot continue from where it is; read everything again."""


class RegistryFeed:
    """The watch thread and the probe task behind a `Registry`."""

    def __init__(
        self, gateway: EtcdGateway, registry: Registry, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._gateway = gateway
        self._registry = registry
        self._loop = loop
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self.resyncs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.restart_watch()
        self._thread.join(timeout=5)

    def restart_watch(self) -> None:
        """Drop the current watch (from any thread); the feed reads everything again."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    async def probe_forever(self) -> None:
        """Mark the view stale when etcd stops answering, and restart a watch that stalled
        silently (a middlebox dropped it): etcd then holds a change under the prefix that
        the view has not seen for several probes in a row.

        A probe not answered within PROBE_TIMEOUT has failed; it is not sent again while the
        one before is still waiting in the etcd thread pool (its own timeout ends it), so a
        frozen etcd costs at most one pool thread here."""
        pending: list[asyncio.Future[int]] = []
        try:
            await self._probe(pending)
        finally:
            for future in pending:
                future.cancel()

    async def _probe(self, pending: list[asyncio.Future[int]]) -> None:
        failures = behind = 0
        known = 0  # etcd's revision at the last answered probe
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                revision = await self._ask(pending, lambda: self._gateway.revision(keys.ROOT))
                if self._registry.revision >= known:
                    newest = 0  # the watch delivered all that etcd held at the last probe
                else:  # a stalled watch, or writes outside the prefix: only a full read tells
                    newest = await self._ask(
                        pending, lambda: self._gateway.newest_revision(keys.ROOT)
                    )
            except (Unavailable, EtcdRejected, TimeoutError) as exc:
                failures += 1
                if failures == PROBE_FAILURES:
                    self._registry.mark_unsynced(f"etcd does not answer: {exc}")
                    self.restart_watch()
                continue
            failures = 0
            known = revision
            behind = behind + 1 if newest > self._registry.revision else 0
            if behind == STALL_PROBES:
                logger.warning("the etcd watch stalled (view at %d, etcd at %d); restarting it",
                               self._registry.revision, newest)  # fmt: skip
                self.restart_watch()
                behind = 0

    @staticmethod
    async def _ask(
        pending: list[asyncio.Future[int]], request: Callable[[], Awaitable[int]]
    ) -> int:
        """The answer to `request`, due within PROBE_TIMEOUT. While the request before is still
        waiting in the etcd thread pool (its own timeout ends it), none is sent: a failure."""
        if pending:
            if not pending[0].done():
                raise TimeoutError(f"no answer within {PROBE_TIMEOUT}s")
            if not pending[0].cancelled():
                pending[0].exception()  # a late answer: retrieved, and superseded
        pending[:] = [asyncio.ensure_future(request())]
        await asyncio.wait(pending, timeout=PROBE_TIMEOUT)
        if not pending[0].done():
            raise TimeoutError(f"no answer within {PROBE_TIMEOUT}s")
        return pending.pop().result()

    # -- the watch thread ---------------------------------------------------------------------

    def _post(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._follow()
            except (Unavailable, EtcdRejected, _Resync) as exc:
                if self._stop.is_set():
                    break
                self.resyncs += 1
                self._post(self._registry.mark_unsynced, str(exc))
            except Exception:  # the thread must never die: a dead feed would freeze the view
                logger.exception("registry feed failed; starting over")
                self._post(self._registry.mark_unsynced, "feed error")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            if self._registry.synced:
                backoff = 0.05

    def _follow(self) -> None:
        revision, kvs = self._gateway.range_prefix_sync(keys.ROOT)
        stream = self._gateway.open_watch(keys.ROOT, revision + 1)
        with self._lock:
            if self._stop.is_set():
                stream.close()
                return
            self._stream = stream
        self._post(self._registry.reset, kvs, revision)
        logger.info("registry loaded at revision %d (%d keys); watching", revision, len(kvs))
        try:
            for result in stream:
                if result.get("canceled") or int(result.get("compact_revision", 0)):
                    raise _Resync(f"watch cancelled ({result.get('cancel_reason', 'compacted')})")
                raw_events = result.get("events", [])
                if raw_events:
                    events = [
                        Event(deleted=item.get("type") == "DELETE", kv=decode_kv(item["kv"]))
                        for item in raw_events
                    ]
                    newest = max(event.kv.mod_revision for event in events)
                    self._post(self._registry.apply, events, newest)
                elif not result.get("created"):
                    # A progress notification: every event up to this revision was delivered.
                    header = result.get("header", {})
                    self._post(self._registry.apply, [], int(header.get("revision", 0)))
            raise Unavailable("etcd closed the watch")
        finally:
            self.restart_watch()
