"""The watches of one v3 Watch stream.

Requests come in through `read()`; `responses()` yields what to send: control answers (created,
canceled, progress) in order, then, for each watch with news, its events from its next revision.
A watch holds no task and no queue of events: the registry calls it when its token's cluster
changes, which only marks it dirty; its events are read from the view when the stream can take
them. Registrations are create-only, so the view's create revisions are the whole history: a
watch that fell behind (a client that reads slowly) catches up from its next revision, nothing
is buffered per event, and a discovery watch is never answered with a compaction.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from discoverd.discovery.v3 import protocol, render
from discoverd.discovery.v3.pb import discovery_pb2 as pb
from discoverd.errors import DiscoverdError, Invalid
from discoverd.store.registry import Registry

MAX_WATCHES_PER_STREAM = 64

Response = pb.WatchResponse | bytes


class Face(Protocol):
    """What a stream needs of the v3 service: the view and the current headers."""

    @property
    def registry(self) -> Registry: ...

    def header(self) -> pb.ResponseHeader: ...

    def headers(self) -> render.Headers: ...


@dataclass(eq=False)
class _Watch:
    watch_id: int
    where: protocol.Scope
    start: int  # the next revision this watch has not seen
    no_puts: bool
    unsubscribe: Callable[[], None] = field(default=lambda: None)

    def take(self, face: Face) -> bytes | None:
        """The events since `start`, serialized for this watch (None: nothing new)."""
        cluster = face.registry.cluster(self.where.token)
        fresh = render.watch_events(cluster, self.where, self.start) if cluster else None
        if fresh is None:
            return None
        newest, events = fresh
        self.start = newest + 1
        return None if self.no_puts else face.headers().watch_response(self.watch_id, events)


class WatchStream:
    def __init__(self, face: Face, describe: Callable[[DiscoverdError], str]) -> None:
        self._face = face
        self._describe = describe
        self._control: deque[Response | None] = deque()
        self._dirty: dict[int, _Watch] = {}
        self._watches: dict[int, _Watch] = {}
        self._wakeup = asyncio.Event()
        self._next_id = 0
        self.error: DiscoverdError | None = None

    async def read(self, requests: AsyncIterator[Any], check: Callable[[Any], Any]) -> None:
        """Handle the client's requests until it closes its side (then the stream ends, as
        etcd's does) or sends something malformed (`error`)."""
        try:
            async for request in requests:
                self._handle(check(request))
        except DiscoverdError as exc:
            self.error = exc
        finally:
            self._send(None)

    async def responses(self) -> AsyncIterator[Response]:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._control or self._dirty:
                if self._control:
                    item = self._control.popleft()
                    if item is None:
                        return
                    yield item
                    continue
                watch = self._dirty.pop(next(iter(self._dirty)))
                data = watch.take(self._face)
                if data is not None:
                    yield data

    def close(self) -> None:
        for watch in self._watches.values():
            watch.unsubscribe()
        self._watches.clear()
        self._dirty.clear()

    # -- requests -----------------------------------------------------------------------------

    def _send(self, item: Response | None) -> None:
        self._control.append(item)
        self._wakeup.set()

    def _mark(self, watch: _Watch) -> None:
        self._dirty[watch.watch_id] = watch
        self._wakeup.set()

    def _handle(self, request: pb.WatchRequest) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            self._create(request.create_request)
        elif kind == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            # -1: a progress notification for every watch of the stream (etcd's convention).
            self._send(pb.WatchResponse(header=self._face.header(), watch_id=-1))
        else:
            raise Invalid("a watch request must carry create_request, cancel_request or progress")

    def _create(self, create: pb.WatchCreateRequest) -> None:
        watch_id = create.watch_id or self._free_id()
        header = self._face.header()
        try:
            where = protocol.scope(create.key, create.range_end)
            if watch_id in self._watches:
                raise Invalid(f"watch id {watch_id} is already in use on this stream")
            if len(self._watches) >= MAX_WATCHES_PER_STREAM:
                raise Invalid(f"at most {MAX_WATCHES_PER_STREAM} watches per stream")
            if create.start_revision < 0:
                raise Invalid("start_revision must not be negative")
        except DiscoverdError as exc:
            # etcd's way of refusing one watch: created and canceled at once, with the reason.
            reason = self._describe(exc)
            self._send(
                pb.WatchResponse(
                    header=header,
                    watch_id=watch_id,
                    created=True,
                    canceled=True,
                    cancel_reason=reason,
                )
            )
            return
        start = create.start_revision or self._face.registry.revision + 1
        no_puts = pb.WatchCreateRequest.NOPUT in create.filters
        watch = _Watch(watch_id, where, start, no_puts)
        watch.unsubscribe = self._face.registry.subscribe(where.token, lambda: self._mark(watch))
        self._watches[watch_id] = watch
        self._send(pb.WatchResponse(header=header, watch_id=watch_id, created=True))
        self._mark(watch)  # replay what it asked for from start_revision

    def _free_id(self) -> int:
        while self._next_id in self._watches:
            self._next_id += 1
        watch_id = self._next_id
        self._next_id += 1
        return watch_id

    def _cancel(self, watch_id: int) -> None:
        watch = self._watches.pop(watch_id, None)
        if watch is not None:
            watch.unsubscribe()
            self._dirty.pop(watch_id, None)
        self._send(pb.WatchResponse(header=self._face.header(), watch_id=watch_id, canceled=True))
