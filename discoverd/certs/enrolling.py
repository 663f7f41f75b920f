"""Group commit of enrollments: one enrollment transaction in flight, and the enrollments that
arrive meanwhile share the next one, whichever clusters they are for (as `/new` groups tokens,
`directory.minting`). The members of a cluster enroll at the same moment by design, and many
clusters form at once: a burst costs a few etcd round trips, not one per member, and the
members of one cluster never race each other for its count.

The first enrollment of a cluster also moves it from its token's lease to one as long as its
CA, in that same transaction (`store.enrollment.Hold`); if another replica moved it first,
its entries are tried again against the cluster as etcd has it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from discoverd.certs import pki
from discoverd.directory.service import Directory
from discoverd.errors import DiscoverdError, NotFound, Unavailable
from discoverd.models import Cluster
from discoverd.store.certificates import CertificateStore
from discoverd.store.enrollment import (
    MAX_OPS,
    Enrollment,
    EnrollRefusal,
    Hold,
    Outcome,
    Place,
    ops_bound,
)
from discoverd.store.gateway import EtcdRejected

logger = logging.getLogger(__name__)

BATCH_MAX = 50  # enrollments per transaction (fewer when they are of many clusters: MAX_OPS)
LINGER = 0.002  # when the last batch had company, how long a small one waits for more
LINGER_BATCH = 16  # a batch this large goes at once
MOVES = 3  # attempts to move a cluster to its CA's lease before a 503

Waiter = tuple[Enrollment, "asyncio.Future[Outcome]"]
Result = Outcome | DiscoverdError


class EnrollmentBatcher:
    """One enrollment transaction in flight; the requests that arrive meanwhile share the next."""

    def __init__(self, directory: Directory, store: CertificateStore) -> None:
        self._directory = directory
        self._store = store
        self._pending: list[Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._company = False  # the last batch had more than one: more are likely coming

    async def enroll(self, entry: Enrollment) -> Outcome:
        """Record `entry`'s certificate and claim its name: the revision, or why not."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        self._kick()
        return await future

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _kick(self) -> None:
        if self._task is not None or self._linger is not None or not self._pending:
            return
        if self._company and len(self._pending) < LINGER_BATCH:
            # Under load, wait a moment for more: one transaction for twice the enrollments
            # costs far less than two. An idle batcher commits at once.
            self._linger = asyncio.get_running_loop().call_later(LINGER, self._flush)
            return
        self._flush()

    def _flush(self) -> None:
        self._linger = None
        if self._task is not None:
            return
        batch = take_batch(self._pending, self._held)
        self._company = len(batch) > 1
        if batch:
            self._task = asyncio.create_task(self._commit(batch))
            self._task.add_done_callback(self._done)

    def _held(self, token: str) -> bool:
        """Whether this replica's view has the cluster on its CA's lease already (it never
        leaves it): then no `Hold` is needed."""
        cluster = self._directory.registry.cluster(token)
        return cluster is not None and cluster.config.held_by_ca

    def _done(self, _: asyncio.Task[None]) -> None:
        self._task = None
        self._kick()

    async def _commit(self, batch: list[Waiter]) -> None:
        try:
            results = await self._record([entry for entry, _ in batch])
        except Exception as exc:  # every waiter must get an answer, whatever went wrong
            if not isinstance(exc, DiscoverdError):
                logger.exception("enrollment batch failed")
                exc = Unavailable("recording the certificate failed")
            results = [exc] * len(batch)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, DiscoverdError):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _record(self, entries: Sequence[Enrollment]) -> list[Result]:
        """Record the entries; a cluster that moved to its CA's lease meanwhile is read again
        and its entries tried again."""
        results: list[Result] = [EnrollRefusal.MOVED] * len(entries)
        todo = list(range(len(entries)))
        moved: set[str] = set()
        for _ in range(MOVES):
            places = await self._places([entries[i].token for i in todo], moved, results, entries)
            todo = [i for i in todo if entries[i].token in places]
            done: list[Outcome] = []
            try:
                done = await self._store.enroll([entries[i] for i in todo], places)
            finally:
                holding = {entries[i].token for i, o in zip(todo, done, strict=False)
                           if isinstance(o, int)}  # fmt: skip
                await self._give_back(places, holding)
            for i, outcome in zip(todo, done, strict=True):
                results[i] = _expired(entries[i]) if outcome is EnrollRefusal.GONE else outcome
            todo = [i for i in todo if results[i] is EnrollRefusal.MOVED]
            if not todo:
                return results
            moved = {entries[i].token for i in todo}
        for i in todo:
            results[i] = Unavailable("the cluster kept moving between leases; retry")
        return results

    async def _places(
        self,
        tokens: list[str],
        moved: set[str],
        results: list[Result],
        entries: Sequence[Enrollment],
    ) -> dict[str, Place]:
        """Where the records of each cluster go; a cluster that cannot be placed fails its
        entries in `results` (and only those)."""
        unique = list(dict.fromkeys(tokens))
        places: dict[str, Place] = {}
        registry = self._directory.registry
        for token in unique if registry.synced else ():  # held by its CA in this replica's
            cluster = None if token in moved else registry.cluster(token)  # view: no task
            if cluster is not None and cluster.config.held_by_ca:
                places[token] = cluster.lease
        unique = [token for token in unique if token not in places]
        found = await asyncio.gather(
            *(self._place(token, token in moved) for token in unique), return_exceptions=True
        )
        pairs = list(zip(unique, found, strict=True))
        places.update((t, p) for t, p in pairs if not isinstance(p, BaseException))
        for token, place in pairs:
            if isinstance(place, DiscoverdError):
                for i, entry in enumerate(entries):
                    results[i] = place if entry.token == token else results[i]
            elif isinstance(place, BaseException):  # a bug, or cancelled: no lease kept
                await self._give_back(places, set())
                raise place
        return places

    async def _place(self, token: str, moved: bool) -> Place:
        """Where the records of `token` go: its cluster's lease once it is held by its CA, else
        a `Hold` onto a new lease. `moved`: read etcd, not this replica's view."""
        read = self._directory.fresh_cluster if moved else self._directory.cluster
        cluster: Cluster = await read(token)  # issuing may have made the CA
        if cluster.config.held_by_ca:
            return cluster.lease
        if cluster.ca is None:  # this replica's view lags the CA it just made
            cluster = await self._directory.fresh_cluster(token)
            if cluster.ca is None:
                raise Unavailable("the cluster's CA is not readable yet; retry")
        lease = await self._store.grant_lease(int(pki.CA_LIFETIME.total_seconds()))
        return Hold(cluster.config, cluster.ca, cluster.lease, lease)

    async def _give_back(self, places: dict[str, Place], holding: set[str]) -> None:
        """Revoke the new leases of the clusters that had no enrollment recorded: they hold
        nothing."""
        for token, place in places.items():
            if isinstance(place, Hold) and token not in holding:
                with contextlib.suppress(Unavailable, EtcdRejected):
                    await self._store.revoke_lease(place.lease)


def take_batch(pending: list[Waiter], held: Callable[[str], bool]) -> list[Waiter]:
    """Take the next batch out of `pending`, oldest first: at most BATCH_MAX, within MAX_OPS
    operations (`held(token)`: its cluster needs no `Hold`), one name once (a second request
    for it learns the first's fate from the next batch)."""
    batch: list[Waiter] = []
    later: list[Waiter] = []
    names: set[tuple[str, str, str]] = set()
    slots: set[tuple[str, str]] = set()
    tokens: set[str] = set()
    holds = 0  # clusters of the batch that need a Hold
    for waiter in pending:
        entry, future = waiter
        if future.done():
            continue  # its request went away
        name = (entry.token, entry.record.profile, entry.record.name)
        new = entry.token not in tokens
        hold = new and not held(entry.token)
        grown = ops_bound(
            len(batch) + 1,
            len(slots) + (entry.slot not in slots),
            len(tokens) + new,
            holds + hold,
        )
        if name in names or len(batch) >= BATCH_MAX or grown > MAX_OPS:
            later.append(waiter)
            continue
        names.add(name)
        slots.add(entry.slot)
        tokens.add(entry.token)
        holds += hold
        batch.append(waiter)
    pending[:] = later
    return batch


def _expired(entry: Enrollment) -> NotFound:
    return NotFound("the discovery token has expired", cause=f"/{entry.token}")
