"""`cdr import` leaves each month it wrote in one part, so the reads after a backfill do
not pay for the parts its batches made (every read is FINAL), and stores each number's
canonical form beside the raw one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from cdr.importer import import_files
from cdr.settings import load_settings
from cdr.store import open_store
from tests.helpers import events


async def test_an_import_merges_the_months_it_wrote(tmp_path: Path) -> None:
    calls = events(
        3_000, seed=41, tenants=("a.example", "b.example"), start=datetime(2024, 1, 20, tzinfo=UTC), spacing_s=1_200
    )
    path = tmp_path / "calls.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(c) for c in calls) + b"\n")
    settings = load_settings(data_dir=tmp_path / "store", clickhouse_url=None)
    report = await import_files(settings, [path], tmp_path / "rejects.ndjson", batch_size=100)
    assert report.stored == len(calls)

    store = open_store(settings.clickhouse)
    try:
        parts = await store.query(
            "SELECT partition, count() FROM system.parts WHERE database = 'cdr' AND table = 'cdr' AND active"
            " GROUP BY partition ORDER BY partition"
        )
        forms = await store.query(
            "SELECT from_number, from_e164 FROM cdr.cdr WHERE direction = 1 AND startsWith(from_number, '0') LIMIT 1"
        )
    finally:
        await store.close()
    assert [p for p, _ in parts] == ["202401", "202402", "202403"]  # 30 batches over three months
    assert all(n == 1 for _, n in parts), parts
    national = forms[0][0]
    assert forms[0][1] == "+84" + national[1:]
