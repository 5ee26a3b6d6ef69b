"""Versioned, idempotent schema migrations, recorded in the database.

Each file ``NNNN_name.sql`` under ``schemas/clickhouse`` is one migration. Its text is
a template: ``${db}``, ``${on_cluster}``, ``${replacing_engine}``, ``${aggregating_engine}``
and ``${plain_engine}`` are filled from the settings, so cluster mode is a setting, not a second schema.

Only ``cdr migrate`` (the chart's Job) and ``cdr run`` migrate; ``cdr ingest`` and
``cdr api`` wait until the schema is current (``wait_until_current``, ``SchemaGate``), so
they need no DDL grants and restart while a ClickHouse replica is down.

Two runs at once are safe without a lock (ClickHouse has none to offer): every
statement is idempotent (``IF NOT EXISTS``; a backfill into a table whose sort key is
the whole row, so a second copy of a row collapses), the applied versions are read
again before each migration (a run skips what another one finished meanwhile), and a
version is recorded only after all its statements succeeded. A version recorded twice
is one version. New migrations must keep to this: ``test_migrations`` applies each one
twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from cdr.settings import ClickHouseSettings, SettingsError
from cdr.store.client import Store
from cdr.store.errors import SchemaMissing, StoreError

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# How often a process waiting for `cdr migrate` looks again, and reminds the log.
_SCHEMA_POLL_S = 2.0
_REMIND_EVERY_S = 60.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]


def schema_dir() -> Path:
    """``schemas/clickhouse``: inside the installed package, or at the repository root."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "schemas" / "clickhouse", here.parents[3] / "schemas" / "clickhouse"):
        if candidate.is_dir():
            return candidate
    raise StoreError("schemas/clickhouse not found beside the package or at the repository root")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or schema_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise StoreError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"duplicate migration versions in {folder}")
    return found


def render(migration: Migration, store: Store) -> list[str]:
    """The statements of one migration for this store (``;``-separated in the file)."""
    cluster = store.cluster
    text = Template(migration.template).substitute(
        db=store.database,
        on_cluster=f"ON CLUSTER {cluster}" if cluster else "",
        replacing_engine="ReplicatedReplacingMergeTree" if cluster else "ReplacingMergeTree",
        aggregating_engine="ReplicatedAggregatingMergeTree" if cluster else "AggregatingMergeTree",
        plain_engine="ReplicatedMergeTree" if cluster else "MergeTree",
    )
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


async def _bootstrap(store: Store) -> None:
    on_cluster = f"ON CLUSTER {store.cluster}" if store.cluster else ""
    engine = "ReplicatedMergeTree" if store.cluster else "MergeTree"
    await store.command(f"CREATE DATABASE IF NOT EXISTS {store.database} {on_cluster}")
    await store.command(
        f"CREATE TABLE IF NOT EXISTS {store.qualified('schema_migrations')} {on_cluster} "
        "(version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        f"ENGINE = {engine} ORDER BY version"
    )


async def applied_versions(store: Store, *, health: bool = False) -> dict[int, str]:
    rows = await store.query(f"SELECT version, checksum FROM {store.qualified('schema_migrations')}", health=health)
    return {int(version): str(checksum) for version, checksum in rows}


def shard_problem(cluster: str, rows: Sequence[Sequence[object]]) -> str | None:
    """Why ``cluster`` cannot hold the CDR tables, from its ``system.clusters`` rows
    (shard_num first), or None. The tables are replicated, not distributed: with two
    shards an insert lands on the shard the load balancer picked and a read sees one
    shard only, so every answer would be silently partial."""
    if not rows:
        return f"cluster {cluster!r} is not in system.clusters of the server we reached"
    shards = len({row[0] for row in rows})
    if shards > 1:
        return (
            f"cluster {cluster!r} has {shards} shards; the CDR tables need one shard with any number of"
            " replicas (a sharded layout needs a Distributed table: README, Scaling)"
        )
    return None


async def check_one_shard(store: Store) -> None:
    """Refuse a cluster of more than one shard (SettingsError naming the setting)."""
    if store.cluster is None:
        return
    rows = await store.query(
        "SELECT shard_num, replica_num, host_name FROM system.clusters WHERE cluster = {cluster:String}",
        {"cluster": store.cluster},
    )
    problem = shard_problem(store.cluster, rows)
    if problem is not None:
        setting = ClickHouseSettings.env("clickhouse_cluster")
        raise SettingsError(f"{setting}: {problem}", [{"setting": setting, "value": store.cluster, "error": problem}])


def unreplicated_problem(macros: dict[str, str], database_engine: str) -> str | None:
    """Why migrating without a cluster would leave unreplicated tables on one replica of a
    replicated setup, or None. ``macros``: the server's ``system.macros``; ``database_engine``:
    the engine our database has (or would get). A server with a ``replica`` macro is one
    replica of several: the tables would exist on it alone, and behind a load balancer the
    others answer UNKNOWN_TABLE. A Replicated (or ClickHouse Cloud's Shared) database
    replicates its tables itself, so that is fine."""
    if "replica" not in macros or database_engine in ("Replicated", "Shared"):
        return None
    named = ", ".join(f"{{{name}}}={value}" for name, value in sorted(macros.items()) if name in ("shard", "replica"))
    return (
        f"unset, but the server that answered is a replica ({named}): the tables would be created"
        " unreplicated on it alone and be missing on the others. Set it to the cluster of"
        " system.clusters that holds the replicas (one shard)"
    )


async def check_replicated_setup(store: Store) -> None:
    """Refuse to migrate a replica of a replicated setup without CDR_CLICKHOUSE_CLUSTER."""
    if store.cluster is not None:
        return
    rows = await store.query("SELECT macro, substitution FROM system.macros")
    macros = {str(name): str(value) for name, value in rows}
    # Our database's engine; not created yet, the one CREATE DATABASE will give it.
    engine = await store.query("SELECT engine FROM system.databases WHERE name = {db:String}", {"db": store.database})
    if not engine:
        engine = await store.query("SELECT value FROM system.settings WHERE name = 'default_database_engine'")
    problem = unreplicated_problem(macros, str(engine[0][0]) if engine else "")
    if problem is not None:
        setting = ClickHouseSettings.env("clickhouse_cluster")
        raise SettingsError(f"{setting}: {problem}", [{"setting": setting, "value": "(unset)", "error": problem}])


async def migrate(
    store: Store, migrations: list[Migration] | None = None, *, feed_retention_days: int | None = None
) -> list[Migration]:
    """Apply the migrations not yet recorded, in order; returns those applied (by this run).
    ``feed_retention_days``: the change feed's retention to apply (``apply_feed_retention``)."""
    migrations = migrations if migrations is not None else load_migrations()
    await check_one_shard(store)
    await check_replicated_setup(store)
    await _bootstrap(store)
    applied = []
    for migration in migrations:
        # Again before each one: another `cdr migrate` may have applied it meanwhile.
        done = await applied_versions(store)
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                log.warning(
                    "migration %04d_%s changed since it was applied; not re-applied",
                    migration.version,
                    migration.name,
                )
            continue
        log.info("applying migration %04d_%s", migration.version, migration.name)
        for statement in render(migration, store):
            await store.command(statement)
        await store.command(
            f"INSERT INTO {store.qualified('schema_migrations')} (version, name, checksum) "
            "VALUES ({version:UInt32}, {name:String}, {checksum:String})",
            {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
        )
        applied.append(migration)
    if feed_retention_days is not None:
        await apply_feed_retention(store, feed_retention_days)
    return applied


_FEED_TTL = re.compile(r"TTL toDateTime\(ingested_at\) \+ toIntervalDay\((\d+)\)")


async def apply_feed_retention(store: Store, days: int) -> None:
    """The change feed keeps ``days`` days (CDR_FEED_RETENTION_DAYS): its TTL is a table
    setting, not a migration's text, so a changed value is applied here, by
    ``MODIFY TTL``, only when it differs from the table's (the ALTER recomputes the
    TTL of every part: not to be run on every start)."""
    rows = await store.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'cdr_changes'",
        {"db": store.database},
    )
    if not rows:
        return  # the feed's migration is not among those applied (a partial list, in tests)
    found = _FEED_TTL.search(str(rows[0][0]))
    if found is not None and int(found[1]) == days:
        return
    on_cluster = f"ON CLUSTER {store.cluster}" if store.cluster else ""
    log.info("setting the change feed's retention", extra={"days": days})
    await store.command(
        f"ALTER TABLE {store.qualified('cdr_changes')} {on_cluster} "
        f"MODIFY TTL toDateTime(ingested_at) + toIntervalDay({int(days)})"
    )


async def missing_migrations(store: Store, *, health: bool = False) -> list[Migration]:
    """The known migrations not recorded in the store ([]: the schema is current). A
    database or table not there yet means nothing is applied; StoreUnavailable when
    ClickHouse cannot answer."""
    try:
        done = await applied_versions(store, health=health)
    except SchemaMissing:
        done = {}
    return [m for m in load_migrations() if m.version not in done]


def describe(missing: Sequence[Migration]) -> str:
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
    return f"waiting for `cdr migrate` (missing {names})"


async def wait_until_current(store: Store) -> None:
    """Until every known migration is recorded: how `cdr ingest` starts. An unreachable
    ClickHouse raises StoreUnavailable (the caller retries within its start-up budget);
    a schema behind this release is waited for as long as it takes (the migration Job
    runs before the workloads change; readiness says what is missing meanwhile)."""
    reminded_at: float | None = None
    while missing := await missing_migrations(store):
        now = time.monotonic()
        if reminded_at is None or now - reminded_at >= _REMIND_EVERY_S:
            reminded_at = now
            log.warning("schema not current: %s", describe(missing))
        await asyncio.sleep(_SCHEMA_POLL_S)
    if reminded_at is not None:
        log.info("schema current")


class SchemaGate:
    """Whether this process has seen the schema current yet, for readiness.

    Once seen, it stays so: a schema does not go back, and a ClickHouse outage later is
    no reason to take the process out of service (its requests answer 503 themselves)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.current = False

    async def check(self) -> tuple[bool, str]:
        """(current, what readiness reports), asking the store until it is current."""
        if not self.current:
            try:
                missing = await missing_migrations(self._store, health=True)
            except StoreError as exc:
                return False, f"not checked yet: {str(exc)[:200]}"
            if missing:
                return False, describe(missing)
            self.current = True
        return True, "current"
