"""The change feed's shared reader (``FeedHub``): one poll of every tenant's new changes per
interval, handed to each subscriber by its tenant. Used by the API's feed (``cdr.api.feed``)
and by `cdr notify` (``cdr.notify``), neither of which imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from cdr.metrics import Metrics
from cdr.settings import ApiSettings
from cdr.store.client import Store
from cdr.store.errors import StoreError
from cdr.store.feed import (
    CHANGES_TABLE,
    HUB_LOOKBACK_S,
    VERSIONS_TABLE,
    Change,
    FeedRead,
    Offsets,
    hub_read,
    hub_start,
    settle,
    unseen,
    versions_of,
    versions_read,
)

log = logging.getLogger(__name__)

# Rows one hub poll reads at most (it reads again at once when it got as many).
_HUB_ROWS = 20_000
# Changes a subscriber may have waiting; past that it reads for itself again (catch-up).
_MAX_WAITING = 10_000
# Subscribers a poll wakes a turn of the event loop (``FeedHub._poll``): a request ready
# meanwhile waits for about this many streams' renders, and a poll of thousands of
# subscribers costs a turn of the loop per this many, not per subscriber.
_WAKE_AT_ONCE = 8
# The hub stops polling this long after its last subscriber left.
_HUB_IDLE_S = 30.0
# A failed poll is retried after a pause that doubles up to this (pokes do not shorten
# it): a store that stays down, or a schema this release does not know, costs a query
# and a log line every few seconds, not one per poll interval.
_HUB_RETRY_MAX_S = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Overflowed(Exception):
    """A subscriber fell more than ``_MAX_WAITING`` changes behind the hub."""


@dataclass(eq=False)
class Subscription:
    """One reader's share of the hub: the changes of its tenant from polls ``first_poll``
    on (those that started after it subscribed), in order."""

    tenant: str
    first_poll: int
    waiting: deque[list[Change]] = field(default_factory=deque)
    count: int = 0
    overflowed: bool = False
    closed: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, changes: list[Change]) -> None:
        if self.overflowed:
            return
        if self.count + len(changes) > _MAX_WAITING:
            # Dropped back to catch-up, not buffered without limit.
            self.overflowed = True
            self.waiting.clear()
            self.count = 0
        else:
            self.waiting.append(changes)
            self.count += len(changes)
        self.ready.set()

    async def next(self, timeout_s: float | None) -> list[Change] | None:
        """The next poll's changes for this tenant; None at the timeout or when the hub closes."""
        while not self.waiting:
            if self.overflowed:
                raise Overflowed
            if self.closed:
                return None
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout_s)
            except TimeoutError:
                return None
        if self.overflowed:
            raise Overflowed
        changes = self.waiting.popleft()
        self.count -= len(changes)
        return changes


class FeedHub:
    """One per API replica: reads the new changes of every tenant someone listens to once
    per interval (and at once when ``poke``d: the ingestor in `cdr run` does after each
    stored batch) and hands each subscriber its tenant's share. Polls only while someone
    subscribes.

    Completeness: a poll reads, per partition, every row of the listened tenants past the
    hub's position that is visible when it reads, among parts stamped since
    ``HUB_LOOKBACK_S`` (plus the replica horizon) before the poll before it -- an insert is
    visible well within that of its stamp. A subscriber is added only between polls (never
    while one reads), and takes every poll after it, each of which reads its tenant; it
    reads for itself whatever was visible before (``FeedRoutes._direct``). The hub's position
    came from rows visible to the poll before, so every offset below it was visible then
    (a partition's rows become visible in offset order), before the subscriber read for
    itself: nothing falls between."""

    def __init__(self, store: Store, metrics: Metrics, *, interval_s: float, horizon_s: int | None) -> None:
        self._store = store
        self._table = store.qualified(CHANGES_TABLE)
        self._versions = store.qualified(VERSIONS_TABLE)
        self._interval_s = interval_s
        self._horizon_s = horizon_s
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._count = 0
        self._polls_started = 0
        self._position: Offsets = {}
        self._last_poll_ms = 0
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock = asyncio.Lock()
        # Held by a poll from its start to its hand-out, and to add a subscriber.
        self._polling: asyncio.Lock = asyncio.Lock()
        self._closed = False
        self._metrics = metrics

    def poke(self) -> None:
        """New changes are stored: poll now, not at the next interval."""
        self._poked.set()

    async def subscribe(self, tenant: str) -> Subscription:
        """Before the reader's own read: it gets every poll that starts from now on."""
        async with self._starting:
            if self._task is None or self._task.done():
                await self._start()
        # Not while a poll reads: it reads only the tenants listened to when it began, and
        # the position it leaves may pass rows of this tenant that this reader's own read
        # (which starts after this) would not see yet.
        async with self._polling:
            sub = Subscription(tenant, self._polls_started + 1, closed=self._closed)
            self._subscribers[tenant].add(sub)
            self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.tenant)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self._subscribers[sub.tenant]

    async def _start(self) -> None:
        """Where polling starts: the last offset per partition among recent parts. A poll
        counts as started here: subscribers read what was visible before for themselves."""
        low = _now_ms() - (HUB_LOOKBACK_S + (self._horizon_s or 0)) * 1000
        started = _now_ms()
        self._polls_started += 1
        query = hub_start(self._table, low_ms=low, now_ms=started, horizon_s=self._horizon_s)
        rows = await self._store.query(query.sql, query.params)
        self._position = {int(p): int(o) for p, o in rows}
        self._last_poll_ms = started
        self._task = asyncio.create_task(self._run(), name="feed-hub")

    async def _run(self) -> None:
        idle_since: float | None = None
        failures = 0
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self._interval_s)
            self._poked.clear()
            if not self._count:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > _HUB_IDLE_S:
                    return
                continue
            idle_since = None
            try:
                full = await self._poll()
            except StoreError as exc:
                failures += 1
                pause_s = min(self._interval_s * 2**failures, _HUB_RETRY_MAX_S)
                log.warning(
                    "change feed poll failed; retrying",
                    extra={"error": str(exc)[:300], "failures": failures, "retry_in_s": round(pause_s, 2)},
                )
                await asyncio.sleep(pause_s)
                continue
            failures = 0
            if full:
                self._poked.set()

    async def _poll(self) -> bool:
        async with self._polling:
            cut, shares = await self._poll_listened()
        # Handed out after the lock, so that a reader subscribing meanwhile waits for the
        # read only (it is not among ``shares``: it takes the polls after this one), and a
        # few subscribers a turn of the loop: woken all at once, 100 streams rendered their
        # shares before a request that became ready meanwhile ran again (a list request's
        # p99 beside them, bench/RESULTS.md, session 17). Polls still hand out in order:
        # the next starts after this returns.
        for n, (sub, changes) in enumerate(shares, 1):
            sub.push(changes)
            if n % _WAKE_AT_ONCE == 0:
                await asyncio.sleep(0)
        return cut

    async def _poll_listened(self) -> tuple[bool, list[tuple[Subscription, list[Change]]]]:
        """One read for every subscriber: True when it was cut at ``_HUB_ROWS`` (more wait),
        and each subscriber's share."""
        started = _now_ms()
        self._polls_started += 1
        index = self._polls_started
        low = self._last_poll_ms - (HUB_LOOKBACK_S + (self._horizon_s or 0)) * 1000
        read = hub_read(
            self._table,
            list(self._subscribers),
            self._position,
            low_ms=low,
            limit=_HUB_ROWS,
            now_ms=started,
            horizon_s=self._horizon_s,
        )
        # The read, then the versions of what it found: most polls find nothing (one per
        # interval), and cost one read, not two; a lookup begun after the read sees every
        # version stored before it, and a poll's latency matters less than a page's.
        changes = [Change.of(row) for row in await self._store.query(read.sql, read.params)]
        # Those of the tenants listened to (a read naming too many tenants reads them all).
        listened = [c for c in changes if c.tenant in self._subscribers]
        if listened:
            lookup = versions_read(self._table, self._versions, listened)
            settle(listened, versions_of(await self._store.query(lookup.sql, lookup.params)))
        self._metrics.feed_hub_polls.inc()
        self._metrics.feed_hub_rows.inc(len(changes))
        cut = len(changes) >= _HUB_ROWS
        if not cut:
            # A cut poll keeps its lower bound: the rows past the cut may be older than this
            # poll's, and a hub that stays behind must still read them.
            self._last_poll_ms = started
        for change in changes:
            self._position[change.partition] = change.offset
        by_tenant: dict[str, list[Change]] = defaultdict(list)
        for change in listened:
            by_tenant[change.tenant].append(change)
        shares = [
            (sub, theirs)
            for tenant, theirs in by_tenant.items()
            for sub in self._subscribers.get(tenant, ())
            if index >= sub.first_poll
        ]
        return cut, shares

    async def close(self) -> None:
        """Stop polling; every subscriber's wait ends (streams end cleanly)."""
        self._closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.closed = True
                sub.ready.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def feed_hub_for(api: ApiSettings, store: Store, metrics: Metrics) -> FeedHub:
    return FeedHub(store, metrics, interval_s=api.feed_poll_interval_ms / 1000, horizon_s=store.max_replica_delay_s)


async def read_settled(store: Store, read: FeedRead, zone: str | None = None) -> list[Change]:
    """The changes of ``read``, settled (``settle``): the read and its versions lookup at
    once, then a second lookup of the calls the first did not see (rarely any).

    Why the lookup need not follow the read: a version is stale only if a newer one of its
    call was delivered before it. Delivered on this page, ``settle`` sees it in the page;
    on an earlier one, it was stored before this read began, so the lookup (begun with it)
    sees it. What the lookup's snapshot may lack is a row stored between the two, its own
    version among them, and ``unseen`` looks those up again. Even that lookup may miss the
    versions of the insert a change came in (ClickHouse fills the two tables' views in
    parallel, ``cdr.store.client._INSERT_SETTINGS``, so either may be visible first): what
    it then lacks is this version alone, whose call is then either new (``created``) or
    holds older versions only (``corrected``), as ``settle`` takes it. Seen the other way
    round, a newer version in the lookup whose change is not visible yet makes an older one
    stale: the newer is delivered at its own position, which no reader passes before it is
    visible (its partition's later offsets come in the same insert's one part or later)."""
    rows, found = await asyncio.gather(
        store.query(read.rows.sql, read.rows.params), store.query(read.versions.sql, read.versions.params)
    )
    changes = [Change.of(row, zone) for row in rows]
    if changes:
        versions = versions_of(found)
        if missing := unseen(changes, versions):
            again = versions_read(read.changes_table, read.versions_table, missing)
            versions.update(versions_of(await store.query(again.sql, again.params)))
        settle(changes, versions)
    return changes
