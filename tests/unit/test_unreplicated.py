"""`cdr migrate` without CDR_CLICKHOUSE_CLUSTER on one replica of a replicated setup would
create unreplicated tables there alone (the others answer UNKNOWN_TABLE behind a load
balancer): refused. The embedded engine has no macros, so the decision is tested here and
`migrate` on it (tests/store/test_migrations.py) shows a plain server is not refused."""

from __future__ import annotations

from cdr.store.migrations import unreplicated_problem


def test_a_server_with_replica_macros_is_refused() -> None:
    problem = unreplicated_problem({"shard": "01", "replica": "ch-1", "cluster": "main"}, "Atomic")
    assert problem is not None
    assert "{replica}=ch-1" in problem and "{shard}=01" in problem and "system.clusters" in problem


def test_a_plain_server_is_fine() -> None:
    assert unreplicated_problem({}, "Atomic") is None
    assert unreplicated_problem({"shard": "01"}, "Atomic") is None  # no replica: nothing to diverge from


def test_a_database_that_replicates_its_tables_is_fine() -> None:
    assert unreplicated_problem({"shard": "s1", "replica": "r1"}, "Replicated") is None
    assert unreplicated_problem({"shard": "s1", "replica": "r1"}, "Shared") is None  # ClickHouse Cloud
