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
from typing import Any

from pydantic import ValidationError

from discoverd.directory import rules
from discoverd.directory.minting import TokenMinter
from discoverd.errors import Conflict, Forbidden, Invalid, NameTaken, NotFound, Unavailable
from discoverd.models import Cluster, ClusterConfig, Member
from discoverd.store.clusters import ClusterStore, RegisterOutcome
from discoverd.store.registry import Registry

logger = logging.getLogger(__name__)

CATCH_UP = 3.0  # how long a write waits for this replica's view to show it
MISS_READS = 8  # concurrent etcd reads for tokens the view does not know
MISS_WAIT = 1.0  # how long a lookup waits for one of them
RETRY_WINDOW = 600.0  # after a registration, its identical retry still succeeds this long


@dataclass(frozen=True)
class Limits:
    default_size: int
    max_size: int
    token_ttl: float
    retry_window: float = RETRY_WINDOW
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
        # Only what differs from the defaults: the common anonymous token skips the validators
        # of the fields it leaves out.
        given: dict[str, Any] = (
            {"cidrs": cidrs, "dns_suffixes": dns_suffixes} if cidrs or dns_suffixes else {}
        )
        if name is not None:
            given["name"] = name
        if clients is not None:
            given["clients"] = clients
        if allow_root:
            given["allow_root"] = True
        now = time.time()
        try:
            config = ClusterConfig(
                size=size, created_at=now, bootstrap_until=now + self.limits.token_ttl, **given
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
        return await self._in_view(token, revision, stored is not None)

    async def fresh_cluster(self, token: str) -> Cluster:
        """The cluster of `token` as etcd has it now: a linearizable read, then this replica's
        view once it has caught up with that read."""
        revision, stored = await self._store.read_cluster(token)
        return await self._in_view(token, revision, stored is not None)

    async def _in_view(self, token: str, revision: int, stored: bool) -> Cluster:
        """The cluster etcd holds (`stored`) at `revision`, once this replica's view shows it."""
        if not stored:
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

    async def register(
        self,
        token: str,
        member_id: str,
        value: str,
        protocol: str = "v2",
        *,
        now: float | None = None,
    ) -> Member:
        """Register `member_id` with `value` through discovery `protocol` ("v2" or "v3";
        create-only). An identical re-registration is the same member retrying an answer it
        never got, and succeeds while the cluster is forming or within --retry-window of the
        registration; otherwise a registration that exists is a duplicate (Conflict), as is a
        member name that another registration holds. A token takes members of one protocol
        only (Forbidden otherwise): v2 and v3 members can never form one etcd cluster."""
        member_id = rules.parse_member_id(member_id)
        value = rules.parse_member_value(value)
        now = time.time() if now is None else now
        cluster = await self.bootstrap_cluster(token)
        existing = cluster.member(member_id)
        if existing is not None:
            return await self._again(cluster, existing, value, now)
        cap = registration_cap(cluster.config.size)
        if len(cluster.members) >= cap:
            raise Invalid(
                f"cluster is full: {len(cluster.members)} registrations for size "
                f"{cluster.config.size}; use a new discovery token",
                cause=f"/{token}/{member_id}",
            )
        if {m.protocol for m in cluster.members} - {protocol}:
            raise Forbidden(_mixed(protocol), cause=f"/{token}/{member_id}")
        registration = await self._store.register(
            token, member_id, value, cluster.lease, now=now, protocol=protocol
        )
        if registration.outcome is RegisterOutcome.NO_TOKEN:
            raise NotFound("Key not found", cause=f"/{token}")
        if registration.outcome is RegisterOutcome.MIXED:
            raise Forbidden(_mixed(protocol), cause=f"/{token}/{member_id}")
        if registration.outcome is RegisterOutcome.NAME_TAKEN:
            self._on_register("name-taken")
            raise Conflict(
                f"member name {rules.member_name(value)} is already registered by "
                f"{registration.holder}; every member needs a unique --name",
                cause=f"/{token}/{member_id}",
            )
        if registration.outcome is RegisterOutcome.EXISTS:
            assert registration.member is not None
            return await self._again(cluster, registration.member, value, now)
        self._on_register("created")
        await self.settle(registration.revision)
        assert registration.member is not None
        return registration.member

    async def _again(self, cluster: Cluster, existing: Member, value: str, now: float) -> Member:
        """A registration of a key that exists: the member's own retry, or a duplicate."""
        registered, size = len(cluster.members), cluster.config.size
        window = self.limits.retry_window
        if not is_retry(existing, value, registered=registered, size=size, now=now, window=window):
            self._on_register("duplicate")
            raise Conflict("Key already exists", cause=f"/{cluster.token}/{existing.member_id}")
        self._on_register("retry")
        await self.settle(existing.created)
        return existing

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


def _mixed(protocol: str) -> str:
    other = "v3 (--discovery-token)" if protocol == "v2" else "v2 (--discovery URL)"
    return (
        f"this token is already bootstrapping a cluster through {other} discovery: etcd folds "
        "the discovery URL or token into the cluster ID, so members of one cluster must all "
        "use the same protocol (etcd 3.6/3.7: --discovery-token; 3.4/3.5: --discovery)"
    )


def is_retry(
    existing: Member, value: str, *, registered: int, size: int, now: float, window: float
) -> bool:
    """Whether registering `value` again under `existing`'s key is that member retrying.

    etcd exits when its registration PUT fails, and systemd restarts it with the identical PUT;
    a PUT that failed on its way back (a 503 after etcd committed it) must then succeed, or the
    member can never bootstrap. A member that lost its data dir after the cluster formed sends
    the same key and value, and must be refused as a duplicate, as etcd itself would. So: the
    same value succeeds while fewer than `size` members have registered, or within `window`
    (--retry-window) of the registration (one stored by an older version has no time).
    """
    if existing.value != value:
        return False
    if registered < size:
        return True
    at = existing.registered_at
    return at is not None and now - at <= window


def registration_cap(size: int) -> int:
    """How many members a cluster of `size` may register: late racers still need to find
    themselves outside the first `size` (etcd's own "cluster is full"), but no more."""
    return max(2 * size, size + 2)
