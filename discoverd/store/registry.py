"""The in-memory view of every cluster, kept in step with etcd by `store.feed`.

Reads never wait on etcd: v2 GETs (and later DNS answers) are served from here. The registry
is owned by the event loop thread: the watch thread hands it each etcd watch response whole
(`call_soon_threadsafe`), and it applies the response in one synchronous step, replacing each
changed `Cluster` with a new immutable object. A reader therefore sees every cluster either
before or after a change, never half of one.

It also holds the waiters: v2 long-polls waiting for a registration at or past an index, and
writers waiting until the view has caught up with their own write (read-your-writes).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from pydantic import ValidationError

from discoverd.models import (
    ApiMember,
    CaRecord,
    CertRecord,
    Cluster,
    ClusterConfig,
    Member,
    MemberRecord,
)
from discoverd.store import keys
from discoverd.store.gateway import KeyValue

logger = logging.getLogger(__name__)

ChangeListener = Callable[[frozenset[str]], None]
# Checked in etcd transactions only, never read from the view.
_IGNORED = (
    keys.KeyKind.NAME,
    keys.KeyKind.MEMBER_NAME,
    keys.KeyKind.ENROLLED,
    keys.KeyKind.ENROLLED_COUNT,
    keys.KeyKind.ROSTER,
)


@dataclass(frozen=True, slots=True)
class Event:
    """One key change from an etcd watch."""

    deleted: bool
    kv: KeyValue


@dataclass(slots=True, eq=False)  # compared by identity: removal must not scan fields
class _MemberWaiter:
    member_id: str | None
    min_index: int
    future: asyncio.Future[Member | None]


class Registry:
    """Clusters by token, the revision they reflect, and whoever waits on them."""

    def __init__(self) -> None:
        self._clusters: dict[str, Cluster] = {}
        self._names: dict[str, str] = {}  # cluster name -> token, of the live clusters
        self.revision = 0
        self.synced = False
        self.unsynced_reason = "not yet read from etcd"
        self._member_waiters: dict[str, dict[_MemberWaiter, None]] = {}
        self._revision_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._listeners: list[ChangeListener] = []
        self._subscribers: dict[str, dict[Callable[[], None], None]] = {}

    # -- reads --------------------------------------------------------------------------------

    def cluster(self, token: str) -> Cluster | None:
        return self._clusters.get(token)

    def __len__(self) -> int:
        return len(self._clusters)

    def named(self, name: str) -> str | None:
        """The token of the live cluster called `name`, if any."""
        return self._names.get(name)

    def tokens(self) -> frozenset[str]:
        return frozenset(self._clusters)

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._member_waiters.values())

    def add_listener(self, listener: ChangeListener) -> None:
        """Call `listener(tokens)` after every change, with the tokens that changed."""
        self._listeners.append(listener)

    def subscribe(self, token: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after every change of `token`'s cluster (its appearance and its
        removal included); returns the function that unsubscribes. Callbacks run on the loop,
        inside the change: they must only take note (a v3 watch marks itself dirty)."""
        self._subscribers.setdefault(token, {})[callback] = None

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(token)
            if subscribers is not None:
                subscribers.pop(callback, None)
                if not subscribers:
                    del self._subscribers[token]

        return unsubscribe

    @property
    def subscribed(self) -> int:
        return sum(len(callbacks) for callbacks in self._subscribers.values())

    # -- updates from the feed ----------------------------------------------------------------

    def reset(self, kvs: Sequence[KeyValue], revision: int) -> None:
        """Replace everything with a full read of the registry at `revision`."""
        clusters: dict[str, Cluster] = {}
        children: list[tuple[keys.ParsedKey, KeyValue]] = []
        for kv in kvs:
            parsed = keys.parse(kv.key)
            if parsed is None or parsed.kind in _IGNORED:
                continue
            if parsed.kind is keys.KeyKind.CONFIG:
                cluster = _cluster_from(parsed.token, kv)
                if cluster is not None:
                    clusters[parsed.token] = cluster
            else:
                children.append((parsed, kv))
        for parsed, kv in children:
            if parsed.token in clusters:
                clusters[parsed.token] = _with_child(clusters[parsed.token], parsed, kv)
        changed = frozenset(self._clusters) | frozenset(clusters)
        self._clusters = clusters
        self._names = {c.config.name: t for t, c in clusters.items() if c.config.name}
        self.revision = max(self.revision, revision)
        self.synced = True
        self.unsynced_reason = ""
        self._after_change(changed)

    def apply(self, events: Iterable[Event], revision: int) -> None:
        """Apply one watch response; `revision` is the newest revision it covers."""
        changed: set[str] = set()
        for event in events:
            parsed = keys.parse(event.kv.key)
            if parsed is None or parsed.kind in _IGNORED:
                continue
            changed.add(parsed.token)
            current = self._clusters.get(parsed.token)
            if parsed.kind is keys.KeyKind.CONFIG:
                self._apply_config(parsed.token, event, current)
            elif current is not None:
                if event.deleted:
                    self._clusters[parsed.token] = _without_child(current, parsed)
                else:
                    self._clusters[parsed.token] = _with_child(current, parsed, event.kv)
        self.revision = max(self.revision, revision)
        self._after_change(frozenset(changed))

    def _apply_config(self, token: str, event: Event, current: Cluster | None) -> None:
        if event.deleted:
            gone = self._clusters.pop(token, None)
            name = gone.config.name if gone is not None else None
            if name and self._names.get(name) == token:
                del self._names[name]
            return
        cluster = _cluster_from(token, event.kv)
        if cluster is None:
            return
        if current is not None:
            cluster = replace(
                current, config=cluster.config, created=cluster.created, lease=cluster.lease
            )
        self._clusters[token] = cluster
        if cluster.config.name:
            self._names.setdefault(cluster.config.name, token)

    def mark_unsynced(self, reason: str) -> None:
        if self.synced:
            logger.warning("registry view is stale: %s", reason)
        self.synced = False
        self.unsynced_reason = reason

    # -- waiting ------------------------------------------------------------------------------

    def wait_member(
        self, token: str, member_id: str | None, min_index: int
    ) -> asyncio.Future[Member | None]:
        """A future for the first registration of `token` (or of its key `member_id`) whose
        index is at least `min_index`. It resolves to None if the token goes away."""
        future: asyncio.Future[Member | None] = asyncio.get_running_loop().create_future()
        found = self._first_member(token, member_id, min_index)
        if found is not None:
            future.set_result(found)
            return future
        waiter = _MemberWaiter(member_id, min_index, future)
        self._member_waiters.setdefault(token, {})[waiter] = None
        future.add_done_callback(lambda _: self._forget(token, waiter))
        return future

    def wait_revision(self, revision: int) -> asyncio.Future[None]:
        """A future that resolves once the view reflects `revision`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.revision >= revision:
            future.set_result(None)
        else:
            heapq.heappush(self._revision_waiters, (revision, next(self._sequence), future))
        return future

    def release_all(self) -> None:
        """Resolve every waiter with 'nothing yet' (used on shutdown)."""
        waiting, self._member_waiters = self._member_waiters, {}
        for waiters in waiting.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(None)
        while self._revision_waiters:
            _, _, future = heapq.heappop(self._revision_waiters)
            if not future.done():
                future.set_result(None)

    # -- internals ----------------------------------------------------------------------------

    def _first_member(self, token: str, member_id: str | None, min_index: int) -> Member | None:
        cluster = self._clusters.get(token)
        if cluster is None:
            return None
        for member in cluster.members:
            if member.created >= min_index and member_id in (None, member.member_id):
                return member
        return None

    def _forget(self, token: str, waiter: _MemberWaiter) -> None:
        waiters = self._member_waiters.get(token)
        if waiters is None:
            return
        waiters.pop(waiter, None)
        if not waiters:
            del self._member_waiters[token]

    def _after_change(self, changed: frozenset[str]) -> None:
        for token in changed:
            self._wake(token)
            self._tell(token)
        while self._revision_waiters and self._revision_waiters[0][0] <= self.revision:
            _, _, future = heapq.heappop(self._revision_waiters)
            if not future.done():
                future.set_result(None)
        if changed:
            self._notify(changed)

    def _wake(self, token: str) -> None:
        waiters = self._member_waiters.get(token)
        if not waiters:
            return
        gone = token not in self._clusters
        for waiter in waiters:
            if waiter.future.done():
                continue
            found = None if gone else self._first_member(token, waiter.member_id, waiter.min_index)
            if gone or found is not None:
                waiter.future.set_result(found)
        remaining = {waiter: None for waiter in waiters if not waiter.future.done()}
        if remaining:
            self._member_waiters[token] = remaining
        else:
            del self._member_waiters[token]

    def _tell(self, token: str) -> None:
        for callback in list(self._subscribers.get(token, ())):
            try:
                callback()
            except Exception:  # one subscriber's bug must not stop the others or the view
                logger.exception("registry subscriber failed")

    def _notify(self, changed: frozenset[str]) -> None:
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:  # a listener's bug must not stop the view or the waiters
                logger.exception("registry listener failed")


def _cluster_from(token: str, kv: KeyValue) -> Cluster | None:
    try:
        config = ClusterConfig.model_validate_json(kv.value)
    except ValidationError:
        logger.error(
            "ignoring a cluster whose stored config is unreadable (revision %d)", kv.mod_revision
        )
        return None
    return Cluster(token=token, config=config, created=kv.create_revision, lease=kv.lease)


def _with_child(cluster: Cluster, parsed: keys.ParsedKey, kv: KeyValue) -> Cluster:
    kind = parsed.kind
    if kind in (keys.KeyKind.V2_MEMBER, keys.KeyKind.V3_MEMBER):
        return cluster.with_member(member_from(parsed.name, kv, kind.value))
    try:
        if kind is keys.KeyKind.API_MEMBER:
            record = MemberRecord.model_validate_json(kv.value)
            return cluster.with_api_member(ApiMember(parsed.name, record, kv.mod_revision))
        if kind is keys.KeyKind.CA:
            return replace(cluster, ca=CaRecord.model_validate_json(kv.value))
        if kind is keys.KeyKind.CERT:
            return cluster.with_cert(CertRecord.model_validate_json(kv.value))
    except ValidationError:
        logger.error("ignoring an unreadable %s record (revision %d)", kind.value, kv.mod_revision)
    return cluster


def _without_child(cluster: Cluster, parsed: keys.ParsedKey) -> Cluster:
    if parsed.kind in (keys.KeyKind.V2_MEMBER, keys.KeyKind.V3_MEMBER):
        return cluster.without_member(parsed.name)
    if parsed.kind is keys.KeyKind.API_MEMBER:
        return cluster.without_api_member(parsed.name)
    if parsed.kind is keys.KeyKind.CA:
        return replace(cluster, ca=None)
    if parsed.kind is keys.KeyKind.CERT:
        return replace(cluster, certs=tuple(c for c in cluster.certs if c.serial != parsed.name))
    return cluster


def member_from(member_id: str, kv: KeyValue, protocol: str = "v2") -> Member:
    """A stored discovery registration: `{"value": ..., "at": unix time}`, or the plain
    `name=peerURL,...` text that older versions stored (no registration time)."""
    text = kv.value.decode(errors="replace")
    at: float | None = None
    if text.startswith("{"):
        try:
            stored = json.loads(text)
            value, raw_at = stored["value"], stored.get("at")
            if not isinstance(value, str):
                raise TypeError("value is not a string")
            text = value
            at = float(raw_at) if isinstance(raw_at, int | float) else None
        except (ValueError, TypeError, KeyError):
            logger.error("unreadable registration %s (revision %d)", member_id, kv.mod_revision)
    return Member(member_id, text, kv.create_revision, registered_at=at, protocol=protocol)
