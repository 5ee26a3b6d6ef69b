"""Migration 0003: a month nobody writes to any more is merged into one part, so FINAL
reads of it have no versions left to merge at query time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cdr.store import Store
from cdr.store.migrations import migrate
from tests.helpers import events, store_events, wait_for

TENANT = "merges.example"


@pytest.fixture
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    """A fresh store, migrated (each test changes the table's merge settings)."""
    store = Store(f"chdb://{tmp_path_factory.mktemp('merges')}", database="cdr")
    try:
        await migrate(store)
        yield store
    finally:
        await store.close()


async def _parts_per_month(store: Store) -> dict[str, int]:
    rows = await store.query(
        "SELECT partition, count() FROM system.parts WHERE database = {db:String} AND table = 'cdr' AND active"
        " GROUP BY partition",
        {"db": store.database},
    )
    return {str(month): int(count) for month, count in rows}


async def test_the_migration_sets_the_age_after_which_a_month_is_merged(store: Store) -> None:
    engine = await store.query("SELECT engine_full FROM system.tables WHERE database = 'cdr' AND name = 'cdr'")
    assert "min_age_to_force_merge_seconds = 3600" in engine[0][0]
    assert "min_age_to_force_merge_on_partition_only = 1" in engine[0][0]


async def test_a_month_left_alone_becomes_one_part_holding_the_newest_versions(store: Store) -> None:
    first = events(60, seed=81, tenants=(TENANT,))
    corrected = [{**e, "status": "FAILED", "emitted_at": "2030-01-01T00:00:00+00:00"} for e in first[::3]]
    await store_events(store, first)
    await store_events(store, corrected + events(30, seed=82, tenants=(TENANT,)))
    before = await _parts_per_month(store)
    assert max(before.values()) >= 2, before  # two inserts: two parts in a month
    # The migration's hour, shortened for the test: the mechanism is the same.
    await store.command(f"ALTER TABLE {store.qualified('cdr')} MODIFY SETTING min_age_to_force_merge_seconds = 1")

    async def merged() -> bool:
        return set((await _parts_per_month(store)).values()) == {1}

    await wait_for(merged, 60, "every month merged into one part")
    assert (await _parts_per_month(store)).keys() == before.keys()
    # Without FINAL: the merge itself kept one row per CDR, the newest version.
    rows = await store.query(f"SELECT toString(id), status FROM {store.qualified('cdr')}")
    assert len(rows) == 90 == len({id_ for id_, _ in rows})
    statuses = dict(rows)
    assert all(statuses[str(e["id"])] == "FAILED" for e in corrected)
