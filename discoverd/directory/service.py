"""The cluster directory, below every face: mint a token, look a cluster up, register a member,
wait for members.

Reads come from the registry view; writes go to etcd through `ClusterStore` and return only once
this replica's view shows them (read-your-writes). Tokens are minted in group commits
(`directory.minting`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from discoverd.directory import rules
from discoverd.directory.minting import TokenMinter
from discoverd.errors import Conflict, Invalid, NameTaken, NotFound, Unavailable
from discoverd.models import Cluster, ClusterConfig, Member
from discoverd.store.clusters import ClusterStore, RegisterOutcome
from discoverd.store.registry import Registry

logger = logging.getLogger(__name__)

CATCH_UP = 3.0  # how long a write waits for this replica's view to show it
MISS_READS = 8  # concurrent etcd reads for tokens the view does not know
MISS_WAIT = 1.0  # how long a lookup waits for one of them


@dataclass(frozen=True)
class Limits:
    default_size: int
    max_size: int
    token_ttl: float
    max_tokens: int = 100_000  # live tokens in all, counted in the view


class Directory:
    """The clusters as every face sees them: mint, look up, register, wait."""

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
        self._minter = TokenMinter(store, limits.token_ttl)
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
        *,
        allow_root: bool = False,
    ) -> str:
        """A new token, stored in etcd. There is no wait for this replica's view: a read that
        misses the view asks etcd, so the token is readable at once anyway."""
        if len(self.registry) >= self.limits.max_tokens:
            raise Unavailable(
                f"this service holds its maximum of {self.limits.max_tokens} live tokens; "
                "retry when some have expired"
            )
        rules.check_token_config(cidrs, dns_suffixes)
        if name is not None and self.registry.named(name) is not None:
            raise NameTaken(f"cluster name {name!r} is taken", cause=name)
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
                allow_root=allow_root,
            )
        except ValidationError as exc:
            raise Invalid(exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc
        if name is None:
            return await self._minter.mint(config)
        token = rules.new_token()
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

    async def fresh_cluster(self, token: str) -> Cluster:
        """The cluster of `token` as etcd has it now: a linearizable read, then this replica's
        view once it has caught up with that read."""
        revision, stored = await self._store.read_cluster(token)
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
        value = rules.parse_member_value(value)
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
