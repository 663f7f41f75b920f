"""Discovery use cases: mint a token, read a cluster, register a member, wait for members.

Reads come from the registry view; writes go to etcd through `ClusterStore` and return only once
this replica's view shows them (read-your-writes). Tokens are minted in group commits: the
`/new` requests that arrive while a transaction is in flight share the next one, so a burst
costs a few etcd round trips, not one per request. Tokens created in the same minute share an
etcd lease that outlives every one of them by `--token-ttl`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from discoverd.discovery import protocol
from discoverd.errors import Conflict, DiscoverdError, Invalid, NameTaken, NotFound, Unavailable
from discoverd.models import Cluster, ClusterConfig, Member
from discoverd.store.clusters import ClusterStore, LeaseGone, RegisterOutcome
from discoverd.store.registry import Registry

logger = logging.getLogger(__name__)

BATCH_MAX = 100  # tokens per transaction (etcd allows 128 operations per list by default)
# One transaction in flight: the requests that arrive meanwhile fill the next one. Measured on
# 2 cores, this gives ~3x bigger batches and more tokens per second than 4 in flight.
INFLIGHT_MAX = 1
CATCH_UP = 3.0  # how long a write waits for this replica's view to show it
LINGER = 0.002  # under load, how long a small batch waits for company
MISS_READS = 8  # concurrent etcd reads for tokens the view does not know
MISS_WAIT = 1.0  # how long a lookup waits for one of them
LINGER_BATCH = 24  # a batch this large goes at once


@dataclass(frozen=True)
class Limits:
    default_size: int
    max_size: int
    token_ttl: float


class DiscoveryService:
    """What the v2 discovery routes can do, independent of HTTP."""

    def __init__(
        self,
        registry: Registry,
        store: ClusterStore,
        limits: Limits,
        on_register: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.registry = registry
        self._store = store
        self.limits = limits
        self._on_register = on_register
        self._minter = _TokenMinter(store, limits.token_ttl)
        self._misses = asyncio.Semaphore(MISS_READS)

    async def close(self) -> None:
        await self._minter.close()

    # -- tokens -------------------------------------------------------------------------------

    async def new_token(
        self,
        size: int,
        name: str | None = None,
        cidrs: tuple[str, ...] = (),
        dns_suffixes: tuple[str, ...] = (),
        clients: int | None = None,
    ) -> str:
        """A new token, stored in etcd. There is no wait for this replica's view: a read that
        misses the view asks etcd, so the token is readable at once anyway."""
        try:
            now = time.time()
            config = ClusterConfig(
                size=size,
                created_at=now,
                bootstrap_until=now + self.limits.token_ttl,
                name=name,
                cidrs=cidrs,
                dns_suffixes=dns_suffixes,
                clients=clients,
            )
        except ValidationError as exc:
            raise Invalid(exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc
        if name is None:
            return await self._minter.mint(config)
        token = protocol.new_token()
        if await self._minter.create_named(token, config) is None:
            raise NameTaken(f"cluster name {name!r} is taken", cause=name)
        return token

    async def cluster(self, token: str) -> Cluster:
        """The cluster of `token` from the view; etcd is asked only when the view lacks it
        (a token minted a moment ago by another replica)."""
        if not self.registry.synced:
            raise Unavailable(f"registry unavailable: {self.registry.unsynced_reason}")
        cluster = self.registry.cluster(token)
        if cluster is not None:
            return cluster
        # A view miss costs an etcd read. Bound them, so a flood of made-up tokens cannot
        # queue registrations behind it in the etcd thread pool; past the bound: 503, fast.
        try:
            await asyncio.wait_for(self._misses.acquire(), MISS_WAIT)
        except TimeoutError:
            raise Unavailable("too many lookups of unknown tokens; retry") from None
        try:
            revision, stored = await self._store.read_cluster(token)
        finally:
            self._misses.release()
        if stored is None:
            raise NotFound("Key not found", cause=f"/{token}")
        await self.caught_up(revision)
        cluster = self.registry.cluster(token)
        if cluster is None:
            raise NotFound("Key not found", cause=f"/{token}")
        return cluster

    async def bootstrap_cluster(self, token: str) -> Cluster:
        """The cluster of `token` while its bootstrap window is open (discovery, member
        registration, enrollment); a cluster whose window closed is gone for those."""
        cluster = await self.cluster(token)
        until = cluster.config.bootstrap_until
        if until is not None and time.time() > until:
            raise NotFound("the discovery token has expired", cause=f"/{token}")
        return cluster

    # -- registrations ------------------------------------------------------------------------

    async def register(self, token: str, member_id: str, value: str) -> Member:
        value = protocol.parse_member_value(value)
        cluster = await self.bootstrap_cluster(token)
        cap = registration_cap(cluster.config.size)
        if len(cluster.members) >= cap and cluster.member(member_id) is None:
            raise Invalid(
                f"cluster is full: {len(cluster.members)} registrations for size "
                f"{cluster.config.size}; use a new discovery token",
                cause=f"/{token}/{member_id}",
            )
        registration = await self._store.register_v2(token, member_id, value, cluster.lease)
        if registration.outcome is RegisterOutcome.NO_TOKEN:
            raise NotFound("Key not found", cause=f"/{token}")
        if registration.outcome is RegisterOutcome.EXISTS:
            self._on_register("duplicate")
            raise Conflict("Key already exists", cause=f"/{token}/{member_id}")
        self._on_register("created")
        await self.settle(registration.revision)
        assert registration.member is not None
        return registration.member

    def wait(
        self, token: str, member_id: str | None, wait_index: int
    ) -> asyncio.Future[Member | None]:
        """A future for the first registration at or past `wait_index` (0: the next one)."""
        min_index = wait_index if wait_index > 0 else self.registry.revision + 1
        return self.registry.wait_member(token, member_id, min_index)

    async def settle(self, revision: int) -> None:
        """After a committed write: wait (bounded) until this replica's view shows it. A view
        that lags only delays the answer: the write happened, so it must not be reported as a
        failure (etcd treats a failed registration PUT as fatal, and a retry would conflict)."""
        try:
            await self.caught_up(revision)
        except Unavailable:
            logger.warning("view lags a committed write (revision %d); answering anyway", revision)

    async def caught_up(self, revision: int) -> None:
        """Return once this replica's view shows `revision` (read-your-writes)."""
        try:
            await asyncio.wait_for(self.registry.wait_revision(revision), CATCH_UP)
        except TimeoutError as exc:
            raise Unavailable("the registry view is not catching up with etcd") from exc


def registration_cap(size: int) -> int:
    """How many members a cluster of `size` may register: late racers still need to find
    themselves outside the first `size` (etcd's own "cluster is full"), but no more."""
    return max(2 * size, size + 2)


class _TokenMinter:
    """Group commit of new tokens: one etcd transaction for every request that waited."""

    def __init__(self, store: ClusterStore, token_ttl: float) -> None:
        self._store = store
        self._ttl = token_ttl
        self._bucket = min(60.0, token_ttl / 100)
        self._pending: list[tuple[str, ClusterConfig, asyncio.Future[str]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease = 0
        self._lease_until = 0.0
        self._lease_lock = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._busy = False  # the last batch had company: more requests are likely coming

    async def mint(self, config: ClusterConfig) -> str:
        token = protocol.new_token()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((token, config, future))
        self._kick()
        return await future  # the token that was committed (a collision mints another)

    async def create_named(self, token: str, config: ClusterConfig) -> int | None:
        """A named token in a transaction of its own (the name must be claimed with it)."""
        try:
            return await self._store.create_named_cluster(
                token, config, await self._current_lease()
            )
        except LeaseGone:
            self._lease_until = 0.0
            return await self._store.create_named_cluster(
                token, config, await self._current_lease()
            )

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _kick(self) -> None:
        if self._linger is not None or not self._pending or len(self._tasks) >= INFLIGHT_MAX:
            return
        if len(self._pending) < LINGER_BATCH and self._busy:
            # Under load, wait a moment for more requests: one transaction for twice the
            # tokens costs far less than two. An idle minter commits at once.
            self._linger = asyncio.get_running_loop().call_later(LINGER, self._flush)
            return
        self._flush()

    def _flush(self) -> None:
        self._linger = None
        if not self._pending or len(self._tasks) >= INFLIGHT_MAX:
            return
        batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
        self._busy = len(batch) > 1
        task = asyncio.create_task(self._commit(batch))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._kick()

    async def _commit(self, batch: list[tuple[str, ClusterConfig, asyncio.Future[str]]]) -> None:
        try:
            revision = await self._create({token: config for token, config, _ in batch})
        except Exception as exc:  # every waiter must get an answer, whatever went wrong
            if not isinstance(exc, DiscoverdError):
                logger.exception("token batch failed")
                exc = Unavailable("token creation failed")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        if revision is None:  # a 128-bit token collided: mint those requests again
            logger.warning("token collision in a batch of %d; minting again", len(batch))
            for _, config, future in batch:
                self._pending.append((protocol.new_token(), config, future))
            return
        for committed, _, future in batch:
            if not future.done():
                future.set_result(committed)

    async def _create(self, configs: dict[str, ClusterConfig]) -> int | None:
        lease = await self._current_lease()
        try:
            return await self._store.create_clusters(configs, lease)
        except LeaseGone:  # the shared lease was revoked or lost: take a new one, once
            logger.warning("token lease is gone; granting a new one")
            self._lease_until = 0.0
            return await self._store.create_clusters(configs, await self._current_lease())

    async def _current_lease(self) -> int:
        async with self._lease_lock:
            now = time.monotonic()
            if now >= self._lease_until:
                self._lease = await self._store.grant_lease(int(self._ttl + self._bucket) + 1)
                self._lease_until = now + self._bucket
            return self._lease
