"""GET /v1/cdr/changes (pull, long poll) and GET /v1/cdr/changes/stream (SSE): the change
feed (README, "Change feed"; the order and its reads: ``cdr.store.feed``).

A reader reads its tenant's changes past its cursor itself (``_direct``) until it has read
everything visible, then takes what the replica's ``FeedHub`` (``cdr.store.feed_hub``, shared
with `cdr notify`) reads for all tenants at once: one query per interval however many streams
and long polls are open.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cdr.api.cursor import CursorCodec, FeedPosition
from cdr.api.errors import ApiError, InvalidParameter, RateLimited
from cdr.api.params import FEED_FILTER_PARAMS, FeedRequest, Limits, MultiQuery, feed_params, parse_feed_request
from cdr.api.ratelimit import Slots
from cdr.api.responses import OrjsonResponse
from cdr.api.routes import Caller, CdrRoutes
from cdr.metrics import Metrics
from cdr.settings import ApiSettings
from cdr.store import Store
from cdr.store.errors import StoreError
from cdr.store.feed import (
    CHANGES_TABLE,
    MAX_PARTITIONS,
    VERSIONS_TABLE,
    Change,
    FeedFilters,
    Offsets,
    start_position,
    tenant_read,
    tenant_start,
)
from cdr.store.feed_hub import FeedHub, Overflowed, read_settled

log = logging.getLogger(__name__)

# Rows a stream reads at once while it catches up (its events are made on the event loop:
# ~30 us each, so a read's worth stays short).
_CATCH_UP_ROWS = 1_000
# A pull read reads ahead of its page: up to this many times the page, at most
# _AHEAD_ROWS (but never fewer than the page), and keeps the rest for the request that
# continues its cursor (``ReadAhead``). A page of a backlog costs a read of its own rows
# plus a lookup of their calls' versions that reads most of a large tenant's versions
# (1,000 random ids or 8,000 alike); read 8,000 at once, both cost ~3x less a change
# (bench/RESULTS.md, session 15).
_AHEAD_FACTOR = 8
_AHEAD_ROWS = 8_000
# Changes kept for every reader of this replica together (~1.9 KB each in memory: ~60 MB),
# and for how long: a client draining a backlog asks again within milliseconds; one that
# went away leaves them here at most this long.
_AHEAD_CAPACITY = 32_000
_AHEAD_TTL_S = 30.0
# Reads ahead running at once per replica: each is two store reads (the changes and their
# versions) on the replica's read workers (CDR_CLICKHOUSE_POOL_SIZE, 8 by default), which the
# requests must keep most of.
_AHEAD_MAX_READS = 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Reader:
    """One reader's progress through its tenant's changes."""

    caller: Caller
    filters: FeedFilters
    position: Offsets
    zone: ZoneInfo
    issuer: str = ""  # the replica that issued its cursor ("": none, or unknown)

    def take(self, change: Change) -> dict[str, object] | None:
        """Move past ``change``; its item when it is to be delivered (a version that is not
        stale, matching the filters, not delivered before by this position)."""
        if change.offset <= self.position.get(change.partition, -1):
            return None  # read directly already
        self.position[change.partition] = change.offset
        if change.change and self.filters.match(change):
            return change.render(self.zone)
        return None


_RunKey = tuple[str, tuple[tuple[int, int], ...]]


@dataclass
class Run:
    """Changes that follow a position, in the feed's order. ``more``: the read they came from
    stopped at its limit (more may follow them); ``fresh``: none of them was served yet (a
    read ahead of the reader, not the rest of a page)."""

    changes: list[Change]
    more: bool
    fresh: bool


class ReadAhead:
    """What pull reads read past the page they answered, by tenant and the position it
    follows (a page's cursor, or the end of a run): the next page of that cursor starts
    from memory. While a reader takes a backlog's pages from a run, the run after it is
    read (``prefetch``): one read ahead of the reader, never more.

    Served later, a run is still what a read then would give first: each partition's
    changes in it continue the position in offset order, and a change stored since lies
    past every offset of its partition visible when the run was read (a partition's rows
    become visible in offset order), so none is skipped; and a newer version stored since
    lies after the run's changes of its call, so none of them comes after it. Only this
    replica knows a run: a cursor continued elsewhere is read from the store, as before.

    ``capacity`` bounds what is held (runs, and reads in flight at the rows they ask for):
    what does not fit is not kept or not read ahead (``room``), and nothing held is pushed
    out for it, so concurrent readers never cancel each other's reads. Expired runs go at
    the next pull."""

    def __init__(
        self,
        capacity: int = _AHEAD_CAPACITY,
        ttl_s: float = _AHEAD_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] = lambda held: None,
        max_reads: int = _AHEAD_MAX_READS,
    ) -> None:
        self._capacity = capacity
        self._max_reads = max_reads
        self._ttl_s = ttl_s
        self._clock = clock
        self._on_change = on_change  # told what is held after each change (a gauge)
        # A run, or the read of one (its size counted as the rows it asks for).
        self._runs: OrderedDict[_RunKey, tuple[float, int, Run | asyncio.Task[Run]]] = OrderedDict()
        self._held = 0

    @staticmethod
    def _key(tenant: str, position: Offsets) -> _RunKey:
        return tenant, tuple(sorted(position.items()))

    def room(self, size: int) -> bool:
        """Whether ``size`` more changes may be held (expired runs dropped first)."""
        self._expire()
        return self._held + size <= self._capacity

    def keep(self, tenant: str, position: Offsets, run: Run) -> None:
        """Keep ``run``, which follows ``position``, if there is room (an empty one is no
        run: the run read ahead for that position, if any, stays)."""
        if run.changes and self.room(len(run.changes)):
            self._hold(self._key(tenant, position), len(run.changes), run)

    def prefetch(self, tenant: str, position: Offsets, rows: int, read: Callable[[], Coroutine[Any, Any, Run]]) -> None:
        """Read the run that follows ``position`` now (``read``, of at most ``rows``), for the
        request that will ask for it; not when one is held or being read for it already, nor
        while ``max_reads`` are being read, nor without room for it."""
        key = self._key(tenant, position)
        reading = sum(isinstance(run, asyncio.Task) and not run.done() for _, _, run in self._runs.values())
        if key not in self._runs and reading < self._max_reads and self.room(rows):
            task = asyncio.create_task(read(), name="feed-read-ahead")
            # A failed read ahead is only a read the request then makes itself.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._hold(key, rows, task)

    async def take(self, tenant: str, position: Offsets) -> Run | None:
        """The run that follows ``position`` (given once; waited for while it is read), or None."""
        self._expire()
        entry = self._runs.pop(self._key(tenant, position), None)
        if entry is None:
            return None
        _, size, run = entry
        self._set_held(self._held - size)
        if isinstance(run, Run):
            return run
        try:
            return await run
        except (ApiError, StoreError):
            return None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the reads ahead still running and wait for them to end (the replica is
        stopping: its store closes next)."""
        tasks = [run for _, _, run in self._runs.values() if isinstance(run, asyncio.Task)]
        while self._runs:
            self._drop(next(iter(self._runs)))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    @property
    def held(self) -> int:
        return self._held

    def _hold(self, key: _RunKey, size: int, run: Run | asyncio.Task[Run]) -> None:
        self._drop(key)
        self._runs[key] = (self._clock() + self._ttl_s, size, run)
        self._set_held(self._held + size)

    def _expire(self) -> None:
        now = self._clock()
        while self._runs and next(iter(self._runs.values()))[0] < now:
            self._drop(next(iter(self._runs)))

    def _drop(self, key: _RunKey) -> None:
        entry = self._runs.pop(key, None)
        if entry is not None:
            _, size, run = entry
            self._set_held(self._held - size)
            if isinstance(run, asyncio.Task):
                run.cancel()

    def _set_held(self, held: int) -> None:
        self._held = held
        self._on_change(held)


class FeedRoutes:
    """The two faces of the feed. Authentication and the rate limit come with the /v1
    routes (``CdrRoutes.tenant_route``); a store read holds one of the tenant's read slots
    only while it runs, never while a long poll or a stream waits."""

    def __init__(
        self,
        settings: ApiSettings,
        store: Store,
        cdr: CdrRoutes,
        cursors: CursorCodec,
        hub: FeedHub,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._ahead = ReadAhead(on_change=metrics.feed_read_ahead_held.set)
        # Named in the cursors this replica issues: a cursor it issued is likely followed by
        # more pages of the same client here (a kept connection); one from another replica
        # says requests are spread over replicas (a load balancer per request), where a read
        # ahead would mostly be read for nothing.
        self._replica = uuid.uuid4().hex
        self._store = store
        self._cdr = cdr
        self._cursors = cursors
        self._hub = hub
        self._table = store.qualified(CHANGES_TABLE)
        self._versions = store.qualified(VERSIONS_TABLE)
        self._horizon_s = store.max_replica_delay_s
        limits = Limits(settings.default_limit, settings.max_limit, settings.max_offset)
        self._params = feed_params(limits)
        self._stream_params = feed_params(limits, stream=True)
        self._streams = Slots(settings.feed_max_streams_per_tenant)
        self._retention_s = settings.feed_retention_days * 86_400

    async def close(self) -> None:
        """The replica is stopping: its reads ahead stop (before the store closes)."""
        await self._ahead.close()

    def routes(self) -> list[Route]:
        return [
            self._cdr.tenant_route("/v1/cdr/changes", self.changes, reads=0),
            self._cdr.tenant_route("/v1/cdr/changes/stream", self.stream, reads=0),
        ]

    async def changes(self, request: Request, caller: Caller) -> Response:
        wanted = parse_feed_request(request.query_params, self._params, caller.context)
        reader = await self._reader(caller, wanted)
        sub = await self._hub.subscribe(caller.tenant) if wanted.wait_s else None
        try:
            items, complete = await self._direct(reader, wanted.limit)
            if items or not complete or sub is None:
                return self._page(reader, items)
            deadline = time.monotonic() + wanted.wait_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    changes = await sub.next(left)
                except Overflowed:
                    self._hub.unsubscribe(sub)
                    sub = await self._hub.subscribe(caller.tenant)
                    items, complete = await self._direct(reader, wanted.limit)
                    if items or not complete:
                        break
                    continue
                if changes is None:
                    break
                for change in changes:
                    item = reader.take(change)
                    if item is not None:
                        items.append(item)
                        if len(items) == wanted.limit:
                            break  # the rest of this poll is read again from the cursor
                if items:
                    break
            return self._page(reader, items)
        finally:
            if sub is not None:
                self._hub.unsubscribe(sub)

    async def stream(self, request: Request, caller: Caller) -> Response:
        last_event_id = request.headers.get("last-event-id")
        query: MultiQuery = request.query_params
        if last_event_id and "cursor" not in request.query_params:
            query = _Query(request, "cursor", last_event_id)
        wanted = parse_feed_request(query, self._stream_params, caller.context)
        reader = await self._reader(caller, wanted)
        release = self._streams.claim(
            caller.tenant,
            RateLimited(
                f"this tenant already has {self._streams.limit} change streams open on this replica; close one"
                " or retry shortly",
                headers={"Retry-After": "5"},
            ),
        )

        async def events() -> AsyncIterator[bytes]:
            sub = await self._hub.subscribe(caller.tenant)
            try:
                complete = False
                while True:
                    if not complete:
                        async for chunk in self._catch_up(reader):
                            yield chunk
                        complete = True
                        continue
                    try:
                        changes = await sub.next(None)
                    except Overflowed:
                        self._hub.unsubscribe(sub)
                        sub = await self._hub.subscribe(caller.tenant)
                        complete = False
                        continue
                    if changes is None:
                        return  # the replica is stopping: the client reconnects elsewhere
                    if chunk := self._events(reader, changes):
                        yield chunk
            finally:
                self._hub.unsubscribe(sub)
                release()

        try:
            return EventSourceResponse(
                events(), ping=self._settings.feed_heartbeat_s, headers={"Cache-Control": "no-store"}
            )
        except BaseException:
            release()
            raise

    async def _catch_up(self, reader: _Reader) -> AsyncIterator[bytes]:
        """Everything visible past the reader's position, read by itself, a read at a time."""
        while True:
            changes, complete = await self._read(reader, _CATCH_UP_ROWS)
            if chunk := self._events(reader, changes):
                yield chunk
            if complete:
                return

    def _events(self, reader: _Reader, changes: list[Change]) -> bytes:
        """The events of the changes the reader takes, each with its cursor as its id, as one
        piece of the stream: one write for a read or a poll, not one per item."""
        events = []
        for change in changes:
            item = reader.take(change)
            if item is not None:
                events.append(_event(orjson.dumps(item), self._cursor(reader)))
        return b"".join(events)

    async def _direct(self, reader: _Reader, limit: int) -> tuple[list[dict[str, object]], bool]:
        """Up to ``limit`` items of the reader's next changes, from the runs read ahead for its
        position, else from one read; going through about a read's worth of changes at most
        (a filter that matches little gets emptier pages sooner, not one request that reads
        the whole backlog): the items, and whether everything visible was read (else more
        follow at once)."""
        tenant = reader.caller.tenant
        # Read ahead only for a cursor this replica issued (see ``_replica``), with room.
        ahead_rows = min(limit * _AHEAD_FACTOR, max(limit, _AHEAD_ROWS))
        here = reader.issuer == self._replica and self._ahead.room(ahead_rows)
        rows = ahead_rows if here else limit
        items: list[dict[str, object]] = []
        gone_through = 0
        while gone_through < rows and (run := await self._ahead.take(tenant, reader.position)):
            if run.fresh and run.more:
                self._prefetch(reader, run.changes, ahead_rows)
            rest = _fill(reader, run.changes, items, limit)
            gone_through += len(run.changes) - len(rest)
            if len(items) == limit or gone_through >= rows:
                self._ahead.keep(tenant, reader.position, Run(rest, run.more, fresh=False))
                self._metrics.feed_page("read_ahead").inc()
                return items, False
        changes, complete = await self._read(reader, rows)
        self._metrics.feed_page("read_ahead" if gone_through else "store").inc()
        if here and not complete:
            self._prefetch(reader, changes, rows)
        rest = _fill(reader, changes, items, limit)
        self._ahead.keep(tenant, reader.position, Run(rest, not complete, fresh=False))
        return items, complete and not rest

    def _prefetch(self, reader: _Reader, run: list[Change], rows: int) -> None:
        """Read the run after ``run`` (which follows the reader's position) ahead of the reader."""
        end = dict(reader.position)
        for change in run:
            end[change.partition] = change.offset
        ahead = _Reader(reader.caller, reader.filters, end, reader.zone)

        async def read() -> Run:
            # Not one of the tenant's read slots: those are its requests' (a read ahead would
            # turn its own requests away with 429s); ReadAhead bounds these reads instead
            # (_AHEAD_MAX_READS at once per replica).
            changes, complete = await self._read(ahead, rows, claim=False)
            return Run(changes, more=not complete, fresh=True)

        self._ahead.prefetch(reader.caller.tenant, end, rows, read)

    async def _read(self, reader: _Reader, limit: int, *, claim: bool = True) -> tuple[list[Change], bool]:
        read = tenant_read(
            self._table,
            self._versions,
            reader.caller.tenant,
            reader.position,
            limit=limit,
            now_ms=_now_ms(),
            horizon_s=self._horizon_s,
            zone=reader.zone.key,
        )
        # The read and its versions, at once: two of the tenant's reads (none for a read ahead).
        release = self._cdr.claim_reads(reader.caller.tenant, 2 if claim else 0)
        try:
            changes = await self._cdr.guarded(read_settled(self._store, read, reader.zone.key))
        finally:
            release()
        return changes, len(changes) < limit

    async def _reader(self, caller: Caller, wanted: FeedRequest) -> _Reader:
        zone = ZoneInfo(caller.timezone)
        now = int(time.time())
        if wanted.cursor is not None:
            position = self._cursors.decode_feed(wanted.cursor, tenant=caller.tenant, now=now)
            try:
                filters = FeedFilters.from_canonical(position.filters)
            except TypeError:
                raise InvalidParameter(
                    "cursor is from an incompatible version; start again with since", param="cursor"
                ) from None
            given = wanted.filters.canonical()
            for name in FEED_FILTER_PARAMS:
                if name in wanted.given_filters and given.get(name) != position.filters.get(name):
                    raise InvalidParameter(
                        f"{name} differs from the filters this cursor was issued for; start a new feed", param=name
                    )
            return _Reader(caller, filters, dict(position.offsets), zone, position.issuer)
        since = wanted.since
        if since is not None and since.timestamp() < now - self._retention_s:
            raise InvalidParameter(
                f"since is older than the feed's retention ({self._settings.feed_retention_days} days)", param="since"
            )
        query = tenant_start(self._table, caller.tenant, since)
        release = self._cdr.claim_reads(caller.tenant, 1)
        try:
            rows = await self._cdr.run(query.sql, query.params)
        finally:
            release()
        return _Reader(caller, wanted.filters, start_position(rows), zone)

    def _cursor(self, reader: _Reader) -> str:
        if len(reader.position) > MAX_PARTITIONS:
            raise InvalidParameter("the feed spans more partitions than a cursor holds", param="cursor")
        return self._cursors.encode_feed(
            FeedPosition(
                reader.caller.tenant,
                reader.filters.canonical(),
                dict(reader.position),
                int(time.time()),
                self._replica,
            )
        )

    def _page(self, reader: _Reader, items: list[dict[str, object]]) -> Response:
        return OrjsonResponse({"data": items, "cursor": self._cursor(reader)})


def _event(data: bytes, event_id: str) -> bytes:
    """One Server-Sent Event: ``data`` on one line, ``event_id`` its id. The framing
    sse_starlette's ``ServerSentEvent`` writes, without its scan of the text for line
    breaks (~5 us an item): orjson escapes CR and LF, SSE's only line breaks, and an id
    is a base64url cursor."""
    return b"id: %b\r\ndata: %b\r\n\r\n" % (event_id.encode(), data)


def _fill(reader: _Reader, changes: list[Change], items: list[dict[str, object]], limit: int) -> list[Change]:
    """Take ``changes`` into ``items`` until it holds ``limit``; the changes left."""
    for n, change in enumerate(changes):
        if len(items) == limit:
            return changes[n:]
        item = reader.take(change)
        if item is not None:
            items.append(item)
    return []


@dataclass(frozen=True)
class _Query:
    """The request's query parameters with one more (the stream's Last-Event-ID as its cursor)."""

    request: Request
    name: str
    value: str

    def getlist(self, key: str) -> list[str]:
        given = self.request.query_params.getlist(key)
        return [*given, self.value] if key == self.name else given
