"""Migration 0002's key table for the lookup by SIP Call-ID: filled by a materialized
view on every insert, backfilled from the CDRs already stored when the migration runs,
and only ever proposing candidates that reads check again on the newest version."""

from __future__ import annotations

from uuid import UUID

import pytest

from cdr.store import Store
from cdr.store.migrations import load_migrations, migrate
from cdr.store.queries import call_id_lookup_query, id_lookup_query
from tests.helpers import events, store_events

TENANT = "keys.example"


async def _by_id(store: Store, id_: str) -> list[list[object]]:
    query = id_lookup_query(store.qualified("cdr"), TENANT, UUID(id_), tz="UTC")
    return await store.query(query.sql, query.params)


async def _by_call_id(store: Store, call_id: str) -> list[list[object]]:
    query = call_id_lookup_query(store.qualified("cdr"), TENANT, call_id, tz="UTC")
    return await store.query(query.sql, query.params)


async def test_the_migration_backfills_what_was_stored_before_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = Store(f"chdb://{tmp_path_factory.mktemp('keys')}", database="cdr")
    try:
        first, *later = load_migrations()
        assert [m.version for m in later][:1] == [2]
        await migrate(store, [first])
        before = events(50, seed=61, tenants=(TENANT,))
        await store_events(store, before, canonical_numbers=False)
        await migrate(store)  # 0002 on a store holding CDRs
        after = events(20, seed=62, tenants=(TENANT,))
        await store_events(store, after)  # through the materialized views
        for event in before + after:
            found = await _by_id(store, str(event["id"]))
            assert found and found[0][0] == str(event["id"])
            by_call = await _by_call_id(store, str(event["sip_call_id"]))
            assert by_call and by_call[0][1] == event["sip_call_id"]
        counted = await store.query(f"SELECT count() FROM {store.qualified('cdr_key_by_call_id')} FINAL")
        assert counted == [[70]]
        # Migrating again changes nothing (the backfill does not run twice).
        assert await migrate(store) == []
    finally:
        await store.close()


async def test_a_corrected_call_id_is_found_under_the_new_one_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = Store(f"chdb://{tmp_path_factory.mktemp('keys-corrected')}", database="cdr")
    try:
        await migrate(store)
        original = events(1, seed=63, tenants=(TENANT,))[0]
        corrected = {**original, "sip_call_id": "fixed-call-id@pbx", "emitted_at": "2030-01-01T00:00:00+00:00"}
        await store_events(store, [original])
        await store_events(store, [corrected])
        assert await _by_call_id(store, str(original["sip_call_id"])) == []
        assert (await _by_call_id(store, "fixed-call-id@pbx"))[0][1] == "fixed-call-id@pbx"
        assert (await _by_id(store, str(original["id"])))[0][1] == "fixed-call-id@pbx"
    finally:
        await store.close()
