"""The change feed's reads on the embedded engine: how a page and a hub poll read.

A drained backlog must not cost each page the whole backlog behind it (issue 27: a page of
1,000 read and sorted every row past the cursor with ``LIMIT n BY``, so pages grew slower as
the backlog grew): a page is one read in sort-key order stopped at its limit, which the
engine's plan shows (the embedded engine reports no rows read per query, and a clock is no
test). The hub must read only the tenants someone listens to.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdr.store import Store
from cdr.store.client import connect
from cdr.store.feed import Change, tenant_read
from cdr.store.feed_hub import FeedHub
from cdr.store.migrations import migrate
from tests.helpers import wait_for

TENANT = "drain.example"
OTHER = "other.example"
PARTITIONS = 4


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


async def test_a_page_reads_its_own_rows_not_the_backlog_behind_it(store: Store) -> None:
    await add_calls(store, TENANT, 40_000)
    await add_calls(store, OTHER, 20_000)
    table = store.qualified("cdr_changes")
    now_ms = time.time_ns() // 10**6
    # Three partitions past their first rows; the fourth one the cursor never saw.
    position = {0: 999, 1: 5_000, 2: 12}
    query = tenant_read(table, TENANT, position, limit=1000, now_ms=now_ms, horizon_s=None)
    # One read in the sort key's order, stopped at the limit: no LIMIT BY, which reads and
    # sorts every row past the position before it keeps any.
    plan = await asyncio.to_thread(explain, store, query.sql, query.params)
    assert sum("Read type: InOrder" in line for line in plan) == 1 and not any("LimitBy" in line for line in plan)

    pages: list[list[Change]] = []
    while len(pages) < 60:
        query = tenant_read(table, TENANT, position, limit=1000, now_ms=now_ms, horizon_s=None)
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
    hub = FeedHub(store, interval_s=0.05, horizon_s=None)
    try:
        sub = await hub.subscribe(TENANT)
        await add_calls(store, OTHER, 5_000)  # nobody listens to these
        await add_calls(store, TENANT, 40, first_offset=10_000)
        hub.poke()
        got: list[Change] = []

        async def all_forty() -> bool:
            while (changes := await sub.next(0.01)) is not None:
                got.extend(changes)
            return len(got) >= 40

        await wait_for(all_forty, 30, "the listened tenant's 40 changes")
        assert {c.tenant for c in got} == {TENANT} and len(got) == 40
        assert hub.rows == 40  # the other tenant's 5,000 were never read
    finally:
        await hub.close()


async def test_times_shown_by_the_engine_are_those_python_shows(store: Store) -> None:
    """A tenant read formats the times in the reader's zone in ClickHouse (as the list API
    does); the hub's rows are rendered in Python: both show the same item."""
    await add_calls(store, TENANT, 60)
    table = store.qualified("cdr_changes")
    now_ms = time.time_ns() // 10**6
    for zone in (ZoneInfo("Asia/Ho_Chi_Minh"), ZoneInfo("America/New_York"), ZoneInfo("UTC")):
        zoned = tenant_read(table, TENANT, {}, limit=100, now_ms=now_ms, horizon_s=None, zone=zone.key)
        plain = tenant_read(table, TENANT, {}, limit=100, now_ms=now_ms, horizon_s=None)
        by_engine = [Change.of(row, zone.key) for row in await store.query(zoned.sql, zoned.params)]
        by_python = [Change.of(row) for row in await store.query(plain.sql, plain.params)]
        assert len(by_engine) == 60 and any(c.time_answered_ms is None for c in by_python)
        for engine, python in zip(by_engine, by_python, strict=True):
            engine.change = python.change = "created"
            assert engine.local is not None
            assert engine.render(zone) == python.render(zone)
