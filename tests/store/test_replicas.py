"""Reads behind a load balancer in front of ClickHouse replicas (issue 25, item 9): a
replica too far behind refuses reads, and a kill reaches every host. No server runs
here: the replica delays come from a table standing in for system.replicas on the
embedded engine; the ON CLUSTER statement is checked as text."""

from __future__ import annotations

import pytest

from cdr.store import Store, StoreUnavailable
from cdr.store.client import connect, kill_statement, replica_lag_filter
from cdr.store.errors import Code, classify
from cdr.store.migrations import migrate
from tests.helpers import events, store_events

TENANT = "replicas.example"


@pytest.fixture
async def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(f"chdb://{tmp_path_factory.mktemp('replicas')}", database="cdr", max_replica_delay_s=5)
    await migrate(store)
    await store_events(store, events(20, seed=5, tenants=(TENANT,)))
    await store.command("CREATE TABLE cdr.fake_replicas (database String, absolute_delay UInt64) ENGINE = Memory")
    return store


async def _read_through(store: Store, delay: int, where: str) -> list[tuple[object, ...]]:
    await store.command("TRUNCATE TABLE cdr.fake_replicas")
    await store.command("INSERT INTO cdr.fake_replicas VALUES ('cdr', {delay:UInt64})", {"delay": delay})
    lag = replica_lag_filter("cdr", 5, replicas="cdr.fake_replicas")
    client = connect(store.dsn, None, {"additional_table_filters": {"cdr.cdr": lag}})
    try:
        return list(client.query(f"SELECT count() FROM cdr.cdr FINAL WHERE {where}").result_rows)
    finally:
        client.close()


async def test_a_replica_behind_refuses_reads_even_when_nothing_matches(store: Store) -> None:
    try:
        assert await _read_through(store, 2, "1") == [(20,)]
        for where in ("1", "tenant_id = 'nobody'"):  # an empty page is how a lagging replica skips
            with pytest.raises(Exception) as behind:
                await _read_through(store, 12, where)
            error = classify(behind.value)  # type: ignore[arg-type]
            assert isinstance(error, StoreUnavailable) and error.code == Code.FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
            assert "more than 5 s behind" in str(error)
    finally:
        await store.close()


async def test_a_cluster_store_reads_with_the_lag_filter(store: Store) -> None:
    """The store's own read clients carry the filter over system.replicas (empty on the
    embedded engine: no replica is behind) and answer as before."""
    try:
        rows = await store.query("SELECT count() FROM cdr.cdr FINAL WHERE tenant_id = {t:String}", {"t": TENANT})
        assert rows == [[20]]
        settings = await store.query("SELECT value FROM system.settings WHERE name = 'additional_table_filters'")
        assert "system.replicas" in settings[0][0] and "absolute_delay" in settings[0][0]
    finally:
        await store.close()


def test_a_kill_goes_to_every_host_of_a_cluster() -> None:
    assert kill_statement(None) == "KILL QUERY WHERE query_id = {query_id:String} ASYNC"
    assert kill_statement("cdr") == "KILL QUERY ON CLUSTER cdr WHERE query_id = {query_id:String} ASYNC"
