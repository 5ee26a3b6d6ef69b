"""Versioned, idempotent schema migrations, recorded in the database.

Each file ``NNNN_name.sql`` under ``schemas/clickhouse`` is one migration. Its text is
a template: ``${db}``, ``${on_cluster}``, ``${replacing_engine}`` and ``${plain_engine}``
are filled from the settings, so cluster mode is a setting, not a second schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from cdr.store.client import Store
from cdr.store.errors import StoreError

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


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


async def migrate(store: Store, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded, in order; returns those applied."""
    migrations = migrations if migrations is not None else load_migrations()
    await _bootstrap(store)
    done = await applied_versions(store)
    applied = []
    for migration in migrations:
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
    return applied


async def is_current(store: Store) -> bool:
    """True when every known migration is recorded (the API's readiness check)."""
    try:
        done = await applied_versions(store, health=True)
    except StoreError:
        return False
    return all(m.version in done for m in load_migrations())
