"""Who migrates and how safely: `cdr migrate` twice at once, statements that can run
twice, the processes that wait for the schema instead of migrating, and the one-shard
rule of cluster mode (issue 25, items 7 and 8)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import pytest

from cdr.runner import schema_step
from cdr.settings import SettingsError, load_settings
from cdr.store import Store
from cdr.store.migrations import (
    SchemaGate,
    load_migrations,
    migrate,
    missing_migrations,
    render,
    shard_problem,
    wait_until_current,
)
from tests.helpers import events, store_events

TENANT = "migrations.example"


def _store(tmp_path_factory: pytest.TempPathFactory, name: str, **extra: object) -> Store:
    return Store(f"chdb://{tmp_path_factory.mktemp(name)}", database="cdr", **extra)  # type: ignore[arg-type]


async def test_two_migrate_runs_at_once_are_safe(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two stores (two clients, as two `cdr migrate` would have) on one engine, each
    running every migration at the same moment over a store holding CDRs: neither fails,
    each version counts once, and 0002's backfill (possibly run by both) leaves one key
    row per CDR once identical rows collapse."""
    first = _store(tmp_path_factory, "twice")
    second = Store(first.dsn, database="cdr")
    try:
        await migrate(first, load_migrations()[:1])
        await store_events(first, events(300, seed=71, tenants=(TENANT,)), canonical_numbers=False)
        results = await asyncio.gather(migrate(first), migrate(second), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        applied = [m.version for r in results if isinstance(r, list) for m in r]
        assert sorted(set(applied)) == [m.version for m in load_migrations()[1:]]
        assert await missing_migrations(first) == []
        keys = await first.query(f"SELECT count() FROM {first.qualified('cdr_key_by_call_id')} FINAL")
        distinct = await first.query(f"SELECT count() FROM {first.qualified('cdr')} FINAL")
        assert keys == distinct == [[300]]
    finally:
        await second.close()
        await first.close()


async def test_every_migration_can_run_twice(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The rule that makes concurrent runs safe, kept by every future migration: each
    statement runs again without an error (IF NOT EXISTS, idempotent backfills)."""
    store = _store(tmp_path_factory, "idempotent")
    try:
        await migrate(store)
        for migration in load_migrations():
            for statement in render(migration, store):
                await store.command(statement)
    finally:
        await store.close()


async def test_ingest_waits_for_the_schema_and_does_not_migrate(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """What `cdr ingest` runs at start-up against a server: it waits (naming what is
    missing) and creates nothing; `cdr migrate` elsewhere ends the wait."""
    waiting = _store(tmp_path_factory, "waits")
    migrator = Store(waiting.dsn, database="cdr")
    caplog.set_level(logging.WARNING, logger="cdr.store.migrations")
    try:
        waiter = asyncio.create_task(wait_until_current(waiting))
        deadline = time.monotonic() + 10
        while not any("schema not current" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and not waiter.done(), "no wait was reported"
            await asyncio.sleep(0.05)
        assert "missing 0001_create_cdr" in caplog.text
        tables = await migrator.query("SELECT name FROM system.tables WHERE database = 'cdr'")
        assert tables == [], "the waiting process created tables"
        await migrate(migrator)
        await asyncio.wait_for(waiter, 10)
    finally:
        await migrator.close()
        await waiting.close()


def test_only_an_embedded_ingestor_migrates(tmp_path_factory: pytest.TempPathFactory) -> None:
    embedded = load_settings(data_dir=tmp_path_factory.mktemp("embedded"), clickhouse_url=None)
    server = load_settings(clickhouse_url="http://clickhouse.example:8123")
    step = schema_step(embedded)
    assert isinstance(step, functools.partial) and step.func is migrate
    assert step.keywords == {"feed_retention_days": embedded.api.feed_retention_days}
    assert schema_step(server) is wait_until_current


async def test_the_schema_gate_says_what_is_missing_and_stays_open(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = _store(tmp_path_factory, "gate")
    gate = SchemaGate(store)
    try:
        current, said = await gate.check()
        assert not current and said.startswith("waiting for `cdr migrate` (missing 0001_create_cdr")
        await migrate(store)
        assert await gate.check() == (True, "current")
    finally:
        await store.close()
    # ClickHouse gone afterwards: the schema seen current stays current.
    assert await gate.check() == (True, "current")


def test_a_cluster_of_one_shard_passes_and_more_are_named() -> None:
    """system.clusters rows (shard_num, replica_num, host_name), as a server returns them."""
    one = [[1, 1, "ch-0"], [1, 2, "ch-1"], [1, 3, "ch-2"]]
    two = [[1, 1, "ch-0"], [1, 2, "ch-1"], [2, 1, "ch-2"], [2, 2, "ch-3"]]
    assert shard_problem("cdr", one) is None
    problem = shard_problem("cdr", two)
    assert problem is not None and "'cdr' has 2 shards" in problem and "Distributed" in problem
    assert "not in system.clusters" in (shard_problem("nope", []) or "")


async def test_migrate_refuses_a_cluster_it_cannot_see_naming_the_setting(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The query over system.clusters runs on the engine (chdb has the table, with no
    cluster in it); the refusal names the setting before any DDL runs."""
    store = _store(tmp_path_factory, "cluster", cluster="cdr_cluster")
    try:
        with pytest.raises(SettingsError) as refused:
            await migrate(store)
        assert refused.value.problems[0]["setting"] == "CDR_CLICKHOUSE_CLUSTER"
        assert "'cdr_cluster' is not in system.clusters" in str(refused.value)
        assert await store.query("SELECT name FROM system.databases WHERE name = 'cdr'") == []
    finally:
        await store.close()
