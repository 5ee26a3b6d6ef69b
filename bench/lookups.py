"""Lookup by SIP Call-ID: the key table of migration 0002 against the bloom-filter scan
it replaced, on the store of `bench/api.py` (10 M CDRs in 100 tenants), the same keys in
the same run, straight on the store client (no HTTP). The lookup by id, which keeps its
bloom filter on the sort key, is printed beside them. Then what the key table's
materialized view costs an insert: the same Arrow batches into a fresh store before and
after migration 0002.

    python bench/api.py            # once, to build the store (or --reuse it)
    python bench/lookups.py [--keys 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(__file__))
from api import STORE, bring_up_to_date
from common import OUT, machine

from cdr.ingest.processor import to_table
from cdr.model.event import CallEnded
from cdr.settings import load_settings
from cdr.simulate import make_event
from cdr.store import open_store
from cdr.store.migrations import load_migrations, migrate
from cdr.store.queries import _FINAL_SETTINGS, _RECORD_COLUMNS, Query, call_id_lookup_query, id_lookup_query

# The Call-ID lookup before migration 0002: a bloom-filter scan over the tenant's rows.
BLOOM_SCAN = (
    f"SELECT {_RECORD_COLUMNS} FROM cdr.cdr FINAL WHERE tenant_id = {{tenant:String}} "
    "AND sip_call_id = {key:String} ORDER BY time_started, id LIMIT 1" + _FINAL_SETTINGS
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=300)
    args = parser.parse_args()
    if not STORE.exists():
        raise SystemExit(f"no store at {STORE}: run bench/api.py first")
    await bring_up_to_date()
    store = open_store(load_settings(data_dir=STORE, clickhouse_url=None).clickhouse)
    try:
        rows = await store.query("SELECT count() FROM cdr.cdr")
        picks = await store.query(
            "SELECT tenant_id, id, sip_call_id FROM cdr.cdr WHERE rand() % 5000 = 0 LIMIT {n:UInt32}",
            {"n": args.keys},
        )
        kinds = {
            "call_id_bloom_scan (baseline)": lambda t, i, c: Query(BLOOM_SCAN, {"tenant": t, "key": c, "tz": "UTC"}),
            "call_id_key_table": lambda t, i, c: call_id_lookup_query("cdr.cdr", t, c, tz="UTC"),
            "id_bloom_on_sort_key": lambda t, i, c: id_lookup_query("cdr.cdr", t, i, tz="UTC"),
        }
        timings: dict[str, list[float]] = {name: [] for name in kinds}
        for tenant, id_, call_id in picks:
            for name, make in kinds.items():  # interleaved: the same noise for each kind
                query = make(tenant, id_, call_id)
                began = time.perf_counter()
                found = await store.query(query.sql, query.params)
                timings[name].append((time.perf_counter() - began) * 1000)
                assert len(found) == 1, (name, tenant, call_id)
    finally:
        await store.close()
    print(f"{machine()}; {rows[0][0]:,} CDRs; {len(picks)} keys, one at a time")
    base = statistics.median(timings["call_id_bloom_scan (baseline)"])
    for name, values in timings.items():
        values.sort()
        p50 = statistics.median(values)
        print(f"  {name:<32} p50 {p50:6.1f} ms  p90 {values[int(len(values) * 0.9)]:6.1f} ms  x{base / p50:4.1f}")


async def insert_cost(batches: int = 6, size: int = 20_000) -> None:
    folder = OUT / "insert-cost-store"
    shutil.rmtree(folder, ignore_errors=True)
    store = open_store(load_settings(data_dir=folder, clickhouse_url=None).clickhouse)
    rng = random.Random(3)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    tables = []
    for b in range(batches * 2):
        events = [
            CallEnded.model_validate(make_event(rng, f"t{i % 50}.example", start + timedelta(seconds=b * size + i)))
            for i in range(size)
        ]
        tables.append(to_table(events))
    try:
        first, *_ = load_migrations()
        await migrate(store, [first])
        seconds: dict[str, list[float]] = {"without the view (0001 only)": [], "with the view (0002)": []}
        for label, chunk in zip(seconds, (tables[:batches], tables[batches:]), strict=True):
            if label.startswith("with the view"):
                await migrate(store)
            for table in chunk:
                began = time.perf_counter()
                await store.insert_arrow("cdr", table)
                seconds[label].append(time.perf_counter() - began)
        keyed = await store.query("SELECT count() FROM cdr.cdr_key_by_call_id")
        assert keyed[0][0] == batches * size * 2, keyed  # backfilled, then filled by the view
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"insert_arrow of {size:,}-row batches ({batches} each, medians):")
    for label, values in seconds.items():
        median = statistics.median(values)
        print(f"  {label:<30} {median * 1000:7.1f} ms  {size / median:10,.0f} rows/s")


if __name__ == "__main__":
    asyncio.run(main())
    asyncio.run(insert_cost())
