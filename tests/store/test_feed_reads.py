"""The change feed's reads on the embedded engine: how a page and a hub poll read.

A drained backlog must not cost each page the whole backlog behind it (issue 27: a page of
1,000 read and sorted every row past the cursor with ``LIMIT n BY``, so pages grew slower as
the backlog grew): a page is one read in sort-key order stopped at its limit, which the
engine's plan shows (the embedded engine reports no rows read per query, and a clock is no
test). The hub must read only the tenants someone listens to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdr.metrics import Metrics
from cdr.store import Store, feed, feed_hub
from cdr.store.client import connect
from cdr.store.errors import StoreUnavailable
from cdr.store.feed import (
    CHANGES_TABLE,
    IMPORT_PARTITION,
    ROWS_PER_MS,
    VERSIONS_TABLE,
    Change,
    hub_read,
    hub_start,
    tenant_read,
    versions_of,
    versions_read,
)
from cdr.store.feed_hub import FeedHub, Subscription, read_settled
from cdr.store.migrations import migrate
from tests.helpers import add_versions, wait_for

TENANT = "drain.example"
OTHER = "other.example"
PARTITIONS = 4
VERSIONS = f"cdr.{VERSIONS_TABLE}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"chdb://{tmp_path / 'store'}", database="cdr")
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


async def add_calls(store: Store, tenant: str, count: int, *, first_offset: int = 0) -> None:
    """``count`` calls of ``tenant`` in one insert, spread over the partitions in turn (call n at
    partition n % 4, offset first_offset + n // 4), as the ingestor stores them."""
    await store.command(
        f"INSERT INTO {store.qualified('cdr')} (tenant_id, id, sip_call_id, cause, duration, billsec, direction,"
        " recording_url, recording_file, extension, from_number, to_number, receive_dest, time_started,"
        " time_answered, time_ended, status, emitted_at, source_partition, source_offset)"
        " SELECT {tenant:String}, generateUUIDv4(number), concat('sip-', toString(number)), 'NORMAL_CLEARING', 60,"
        " 50, 'inbound', '', '', '101', '0901234567', '0281234567', '',"
        " toDateTime64('2026-12-01 00:00:00', 3, 'UTC') + toIntervalSecond(number),"
        " if(number % 3 = 0, NULL, toDateTime64('2026-12-01 00:00:10', 3, 'UTC') + toIntervalSecond(number)),"
        " toDateTime64('2026-12-01 00:01:00', 3, 'UTC') + toIntervalSecond(number), 'ANSWERED',"
        " toDateTime64('2026-12-01 00:01:01', 3, 'UTC') + toIntervalSecond(number),"
        " toInt32(number % {partitions:UInt32}), toInt64({first:UInt64} + intDiv(number, {partitions:UInt32}))"
        " FROM numbers({count:UInt64})",
        {"tenant": tenant, "count": count, "partitions": PARTITIONS, "first": first_offset},
    )


def explain(store: Store, sql: str, params: dict[str, Any]) -> list[str]:
    """The engine's plan of a read (a client of its own, on this thread)."""
    client = connect(store.dsn, None)
    try:
        return [str(line) for (line,) in client.query(f"EXPLAIN actions = 1 {sql}", parameters=params).result_rows]
    finally:
        client.close()


def hub_reads(metrics: Metrics) -> tuple[float, float]:
    """The hub's polls and the rows they read, as its metrics count them."""
    value = metrics.registry.get_sample_value
    return value("cdr_feed_hub_polls_total") or 0.0, value("cdr_feed_hub_rows_total") or 0.0


async def received(sub: Subscription, count: int, what: str) -> list[Change]:
    """What the hub hands ``sub``, once it is at least ``count`` changes."""
    got: list[Change] = []

    async def enough() -> bool:
        while (changes := await sub.next(0.01)) is not None:
            got.extend(changes)
        return len(got) >= count

    await wait_for(enough, 30, what)
    return got


async def test_a_page_reads_its_own_rows_not_the_backlog_behind_it(store: Store) -> None:
    await add_calls(store, TENANT, 40_000)
    await add_calls(store, OTHER, 20_000)
    table = store.qualified(CHANGES_TABLE)
    now_ms = time.time_ns() // 10**6
    # Three partitions past their first rows; the fourth one the cursor never saw.
    position = {0: 999, 1: 5_000, 2: 12}
    query = tenant_read(table, VERSIONS, TENANT, position, limit=1000, now_ms=now_ms, horizon_s=None).rows
    # One read in the sort key's order, stopped at the limit: no LIMIT BY, which reads and
    # sorts every row past the position before it keeps any.
    plan = await asyncio.to_thread(explain, store, query.sql, query.params)
    assert sum("Read type: InOrder" in line for line in plan) == 1 and not any("LimitBy" in line for line in plan)

    pages: list[list[Change]] = []
    while len(pages) < 60:
        query = tenant_read(table, VERSIONS, TENANT, position, limit=1000, now_ms=now_ms, horizon_s=None).rows
        page = [Change.of(row) for row in await store.query(query.sql, query.params)]
        if not page:
            break
        pages.append(page)
        for change in page:
            position[change.partition] = change.offset
    read = [(c.partition, c.offset) for page in pages for c in page]
    assert all(c.tenant == TENANT for page in pages for c in page)
    assert len(pages[0]) == 1000 and read[:2] == [(0, 1_000), (0, 1_001)]
    # Every row past the position once, each partition in order (the unnamed one from its start).
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in read:
        by_partition[partition].append(offset)
    assert by_partition == {
        0: list(range(1_000, 10_000)),
        1: list(range(5_001, 10_000)),
        2: list(range(13, 10_000)),
        3: list(range(10_000)),
    }


async def test_the_hub_reads_only_the_tenants_someone_listens_to(store: Store) -> None:
    metrics = Metrics()
    hub = FeedHub(store, metrics, interval_s=0.05, horizon_s=None)
    try:
        sub = await hub.subscribe(TENANT)
        await add_calls(store, OTHER, 5_000)  # nobody listens to these
        await add_calls(store, TENANT, 40, first_offset=10_000)
        hub.poke()
        got = await received(sub, 40, "the listened tenant's 40 changes")
        assert {c.tenant for c in got} == {TENANT} and len(got) == 40
        assert hub_reads(metrics)[1] == 40  # the other tenant's 5,000 were never read
        assert hub_reads(metrics)[0] >= 1  # counted (cdr_feed_hub_polls_total)
    finally:
        await hub.close()


async def test_a_poll_wakes_a_few_subscribers_a_turn_of_the_loop(store: Store) -> None:
    """Woken all at once, every stream would render its share of a poll before a request
    that became ready meanwhile runs again (a list request waited behind 100 streams). Here
    a ticker that runs once every turn of the loop runs between any ``_WAKE_AT_ONCE``
    subscribers."""
    at_once = feed_hub._WAKE_AT_ONCE
    hub = FeedHub(store, Metrics(), interval_s=3600, horizon_s=None)  # polls only when poked
    events: list[str] = []
    ticking = True

    async def ticker() -> None:
        while ticking:
            events.append("tick")
            await asyncio.sleep(0)

    async def follow(sub: Subscription, name: str) -> None:
        assert await sub.next(30), f"{name}: nothing handed out within 30 s"
        events.append(name)

    try:
        subs = [await hub.subscribe(TENANT) for _ in range(2 * at_once + 1)]
        await add_calls(store, TENANT, 10)
        followers = [asyncio.create_task(follow(sub, f"sub{n}")) for n, sub in enumerate(subs)]
        tick = asyncio.create_task(ticker())
        hub.poke()
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        ticking = False
        await tick
        woken = "".join("t" if event == "tick" else "s" for event in events)
        assert woken.count("s") == len(subs)
        assert max(len(run) for run in woken.split("t")) == at_once, woken.strip("t")  # never more at once
    finally:
        await hub.close()


async def test_a_failing_poll_is_retried_after_growing_pauses_and_delivers_after(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that fails the hub's reads (down, or a schema of another release during a
    rollout) is asked again after pauses that double, whatever pokes the hub in between,
    and once it answers every change is delivered."""
    hub = FeedHub(store, Metrics(), interval_s=0.01, horizon_s=None)
    query = store.query
    failing = [True]

    async def flaky(sql: str, params: Any = None, **kwargs: Any) -> list[Any]:
        if failing[0] and VERSIONS in sql:
            raise StoreUnavailable("the store is down")
        return await query(sql, params, **kwargs)

    caplog.set_level(logging.WARNING, logger="cdr.store.feed_hub")
    try:
        sub = await hub.subscribe(TENANT)
        monkeypatch.setattr(store, "query", flaky)
        await add_calls(store, TENANT, 12, first_offset=100)

        def pauses() -> list[float]:
            return [r.retry_in_s for r in caplog.records if r.getMessage().startswith("change feed poll failed")]  # type: ignore[attr-defined]

        async def failed_four_times() -> bool:
            hub.poke()  # as every stored batch does: no shorter pause for it
            return len(pauses()) >= 4

        await wait_for(failed_four_times, 30, "four failed polls")
        assert pauses()[:4] == [0.02, 0.04, 0.08, 0.16]
        failing[0] = False
        got = await received(sub, 12, "the 12 changes after the store recovered")
        assert len({c.id for c in got}) == 12
    finally:
        await hub.close()


async def test_times_shown_by_the_engine_are_those_python_shows(store: Store) -> None:
    """A tenant read formats the times in the reader's zone in ClickHouse (as the list API
    does); the hub's rows are rendered in Python: both show the same item."""
    await add_calls(store, TENANT, 60)
    table = store.qualified(CHANGES_TABLE)
    now_ms = time.time_ns() // 10**6
    for zone in (ZoneInfo("Asia/Ho_Chi_Minh"), ZoneInfo("America/New_York"), ZoneInfo("UTC")):
        zoned = tenant_read(table, VERSIONS, TENANT, {}, limit=100, now_ms=now_ms, horizon_s=None, zone=zone.key).rows
        plain = tenant_read(table, VERSIONS, TENANT, {}, limit=100, now_ms=now_ms, horizon_s=None).rows
        by_engine = [Change.of(row, zone.key) for row in await store.query(zoned.sql, zoned.params)]
        by_python = [Change.of(row) for row in await store.query(plain.sql, plain.params)]
        assert len(by_engine) == 60 and any(c.time_answered_ms is None for c in by_python)
        for engine, python in zip(by_engine, by_python, strict=True):
            engine.change = python.change = "created"
            assert engine.local is not None
            assert engine.render(zone) == python.render(zone)


async def add_change(store: Store, tenant: str, partition: int, offset: int, *, ingested_ms: int | None = None) -> None:
    """One call of ``tenant`` at (partition, offset); stamped now unless ``ingested_ms``."""
    stamp = "now64(3)" if ingested_ms is None else "fromUnixTimestamp64Milli({ingested:Int64}, 'UTC')"
    await store.command(
        f"INSERT INTO {store.qualified('cdr')} (tenant_id, id, sip_call_id, cause, duration, billsec, direction,"
        " recording_url, recording_file, extension, from_number, to_number, receive_dest, time_started,"
        " time_answered, time_ended, status, emitted_at, source_partition, source_offset, ingested_at)"
        " SELECT {tenant:String}, generateUUIDv4(), 'sip', 'NORMAL_CLEARING', 60, 50, 'inbound', '', '', '101',"
        " '0901234567', '0281234567', '', toDateTime64('2026-12-01 00:00:00', 3, 'UTC'), NULL,"
        " toDateTime64('2026-12-01 00:01:00', 3, 'UTC'), 'ANSWERED', toDateTime64('2026-12-01 00:01:01', 3, 'UTC'),"
        f" {{partition:Int32}}, {{offset:Int64}}, {stamp}",
        {"tenant": tenant, "partition": partition, "offset": offset, "ingested": ingested_ms or 0},
    )


async def test_the_hub_starts_before_rows_a_reader_cannot_see_yet(store: Store) -> None:
    """The hub's first position comes from the rows every reader can see: an import batch
    stamped seconds ago (visible IMPORT_HORIZON_S after its stamp) and, on a cluster, rows
    younger than the replica horizon are not passed, or no reader would ever get them."""
    table = store.qualified(CHANGES_TABLE)
    now_ms = time.time_ns() // 10**6
    old_import = (now_ms - 60_000) * ROWS_PER_MS
    fresh_import = (now_ms - 1_000) * ROWS_PER_MS
    await add_change(store, TENANT, IMPORT_PARTITION, old_import, ingested_ms=now_ms - 60_000)
    await add_change(store, TENANT, IMPORT_PARTITION, fresh_import, ingested_ms=now_ms - 1_000)
    await add_change(store, TENANT, 0, 7, ingested_ms=now_ms - 20_000)
    await add_change(store, TENANT, 0, 8)  # just stored

    async def start(horizon_s: int | None) -> dict[int, int]:
        query = hub_start(table, low_ms=now_ms - 120_000, now_ms=now_ms, horizon_s=horizon_s)
        return {int(p): int(o) for p, o in await store.query(query.sql, query.params)}

    assert await start(None) == {IMPORT_PARTITION: old_import, 0: 8}
    # With a 10 s replica horizon: neither the row stored just now nor the import of a second ago.
    assert await start(10) == {IMPORT_PARTITION: old_import, 0: 7}


async def test_a_hub_behind_by_more_than_its_lookback_still_reads_every_row(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll cut at its row limit keeps its lower bound: the rows past the cut were stored
    before the poll began and must still be read by the next one, however far behind. The
    hub's clock is set: it starts at the rows' stamp and polls 10 s later (lookback 1 s)."""
    stamp_ms = time.time_ns() // 10**6
    clock = [stamp_ms]
    monkeypatch.setattr(feed_hub, "_now_ms", lambda: clock[0])
    monkeypatch.setattr(feed_hub, "_HUB_ROWS", 10)
    monkeypatch.setattr(feed_hub, "HUB_LOOKBACK_S", 1)
    metrics = Metrics()
    hub = FeedHub(store, metrics, interval_s=3600, horizon_s=None)  # polls only when poked
    try:
        sub = await hub.subscribe(TENANT)
        for offset in range(25):
            await add_change(store, TENANT, offset % 2, 100 + offset, ingested_ms=stamp_ms)
        clock[0] = stamp_ms + 10_000
        hub.poke()
        got: list[Change] = []

        async def all_25() -> bool:
            while (changes := await sub.next(0.01)) is not None:
                got.extend(changes)
            return len(got) >= 25

        await wait_for(all_25, 30, "25 changes read in three cut polls")
        assert len({(c.partition, c.offset) for c in got}) == 25 and hub_reads(metrics)[0] == 3
    finally:
        await hub.close()


async def test_a_lookup_that_missed_the_reads_rows_is_made_again(store: Store) -> None:
    """The versions lookup runs beside the read, on its own snapshot: the calls whose own
    version it did not see (a row stored between the two) are looked up again, and the
    page is settled as a lookup after the read settles it. Here the lookup beside the read
    sees no row at all (as if it ran before any was stored)."""
    ids = [uuid.uuid4() for _ in range(40)]
    await add_versions(store, TENANT, ids, emitted_s=0, first_offset=0)  # first versions
    await add_versions(store, TENANT, ids[:10], emitted_s=100, first_offset=1_000)  # corrections
    await add_versions(store, TENANT, ids[:5], emitted_s=0, first_offset=2_000)  # old versions again, later
    table, now_ms = store.qualified(CHANGES_TABLE), time.time_ns() // 10**6
    read = tenant_read(table, VERSIONS, TENANT, {}, limit=1000, now_ms=now_ms, horizon_s=None)
    blind = dataclasses.replace(
        read, versions=tenant_read(table, VERSIONS, TENANT, {}, limit=0, now_ms=now_ms, horizon_s=None).versions
    )
    settled = {(c.partition, c.offset): (c.id, c.change) for c in await read_settled(store, read)}
    again = {(c.partition, c.offset): (c.id, c.change) for c in await read_settled(store, blind)}
    assert settled == again and len(settled) == 55
    corrected = {str(i) for i in ids[:10]}
    for (_, offset), (id_, change) in settled.items():
        if offset >= 1_000 and offset < 2_000:
            assert change == "corrected", (offset, id_)
        elif id_ in corrected:
            assert change == "", (offset, id_)  # stale: a newer version is stored
        else:
            assert change == "created", (offset, id_)


async def test_a_poll_of_thousands_looks_their_versions_up_by_where_they_lie(store: Store) -> None:
    """A hub poll's versions lookup names its calls by the changes table's rows where they
    lie (per partition, a range of offsets), not by a list of their ids: a poll of thousands
    of changes would send that list as a form field, which a ClickHouse server caps at 128 KiB
    (http_max_field_value_size: ~3,300 ids), and the poll would fail again and again."""
    await add_calls(store, TENANT, 8_000)
    await add_calls(store, OTHER, 8_000)
    table = store.qualified(CHANGES_TABLE)
    poll = hub_read(table, [TENANT], {}, low_ms=0, limit=20_000, now_ms=time.time_ns() // 10**6, horizon_s=None)
    changes = [Change.of(row) for row in await store.query(poll.sql, poll.params)]
    assert len(changes) == 8_000
    lookup = versions_read(table, VERSIONS, changes)
    assert len(repr(lookup.params)) < 1_000
    found = versions_of(await store.query(lookup.sql, lookup.params))
    assert set(found) == {(c.tenant, c.id) for c in changes}
    assert all(first == newest == c.emitted_ms for c in changes for first, newest in [found[(c.tenant, c.id)]])


async def test_a_hub_listening_to_more_tenants_than_a_read_names_reads_them_all(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_NAMED_TENANTS`` listened tenants (a list of thousands as a parameter would
    outgrow what a server takes), a poll reads every tenant's rows and delivers those of the
    tenants listened to, settled as before (a correction is ``corrected``, the version it
    replaced stale)."""
    monkeypatch.setattr(feed, "MAX_NAMED_TENANTS", 1)
    third = "third.example"
    # Polls only when poked, after every row is stored: a poll between the first versions
    # and their corrections would rightly deliver all ten as ``created``.
    metrics = Metrics()
    hub = FeedHub(store, metrics, interval_s=3600, horizon_s=None)
    try:
        mine, theirs = await hub.subscribe(TENANT), await hub.subscribe(third)
        ids = [uuid.uuid4() for _ in range(10)]
        await add_calls(store, OTHER, 300)  # nobody listens to these
        await add_versions(store, TENANT, ids, emitted_s=0, first_offset=10_000)
        await add_versions(store, TENANT, ids[:3], emitted_s=100, first_offset=11_000)
        await add_calls(store, third, 20, first_offset=20_000)
        hub.poke()
        got = await received(mine, 13, "the listened tenant's 13 changes")
        got_third = await received(theirs, 20, "the third tenant's 20 changes")
        assert {c.tenant for c in got} == {TENANT} and {c.tenant for c in got_third} == {third}
        by_offset = sorted((c.offset, c.change) for c in got)
        assert [change for offset, change in by_offset if offset >= 11_000] == ["corrected"] * 3
        assert sorted(change for offset, change in by_offset if offset < 11_000) == [""] * 3 + ["created"] * 7
        assert hub_reads(metrics)[1] >= 333  # every tenant's rows were read
    finally:
        await hub.close()
