"""Runs the schema migrations and every kind of API query on whichever ClickHouse engine
`import chdb` finds (an older chdb build on PYTHONPATH; see test_older_clickhouse.py),
with the read settings the API sets, and prints one line per check. Exits non-zero on
the first statement the engine refuses (a function, setting or syntax it lacks).

Parameters are bound the way a server binds them (`SET param_<name>`), because the
clickhouse-connect chdb transport needs chdb 4 and this runs on older builds too."""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import chdb
import orjson
from chdb import session

from cdr.ingest.processor import to_table
from cdr.model.event import CallEnded
from cdr.store import Store
from cdr.store.client import _CLIENT_SETTINGS, ReadBudget
from cdr.store.migrations import load_migrations, render
from cdr.store.queries import (
    GROUP_BY,
    Query,
    SearchFilters,
    call_id_lookup_query,
    export_query,
    export_window_end_query,
    id_lookup_query,
    month_counts_query,
    page_query,
    phone_keys_query,
    scroll_query,
    stats_query,
    tenant_edge_query,
    tenant_granules_query,
)
from tests.helpers import encoded, events, parse_event

TABLE = "cdr.cdr"
TZ = "Asia/Ho_Chi_Minh"
# The two ends of the key space the store holds: an export window through either is all.
FIRST_KEY = (datetime(1900, 1, 1, tzinfo=UTC), UUID(int=0))
LAST_KEY = (datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC), UUID(int=2**128 - 1))


def _text(value: Any, *, nested: bool = False) -> str:
    """A parameter's value as the server reads it (quoted inside an array or a tuple)."""
    if isinstance(value, list | tuple):
        inner = ", ".join(_text(v, nested=True) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    text = _stamp(value.astimezone(UTC)) if isinstance(value, datetime) else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'" if nested else text


def _literal(value: Any) -> str:
    return "'" + _text(value).replace("\\", "\\\\").replace("'", "''") + "'"


def run(db: session.Session, what: str, query: Query, fmt: str = "CSV") -> str:
    for name, value in query.params.items():
        db.query(f"SET param_{name} = {_literal(value)}")
    result = db.query(query.sql, fmt)
    print(f"ok  {what}")
    return str(result)


def main() -> None:
    db = session.Session(tempfile.mkdtemp(prefix="cdr-compat-"))
    version = str(db.query("SELECT version()", "CSV")).strip().strip('"')
    print(f"engine: ClickHouse {version} (chdb {'.'.join(chdb.chdb_version)})")
    target = cast(Store, SimpleNamespace(database="cdr", cluster=None))
    db.query("CREATE DATABASE IF NOT EXISTS cdr")
    for migration in load_migrations():
        for statement in render(migration, target):
            db.query(statement)
        print(f"ok  migration {migration.version:04d}_{migration.name}")
    parsed = [parse_event(value, UTC, 65_536) for _, value in encoded(events(300, seed=5, tenants=("t.example",)))]
    rows = to_table([p for p in parsed if isinstance(p, CallEnded)]).to_pylist()
    lines = b"\n".join(orjson.dumps(_json_row(r)) for r in rows)
    db.query("INSERT INTO cdr.cdr FORMAT JSONEachRow " + lines.decode())
    print(f"ok  insert ({len(rows)} rows, through the migrations' materialized views)")
    budget = ReadBudget(max_rows_to_read=10**9, max_memory_bytes=2**31)
    for name, value in {**_CLIENT_SETTINGS, **budget.settings()}.items():
        db.query(f"SET {name} = {value}")
    print("ok  the API's read settings")
    first = rows[10]
    moment = first["time_started"]
    every = SearchFilters(
        start=moment,
        end=moment,
        start_ended=moment,
        end_ended=moment,
        duration=30,
        min_duration=10,
        max_duration=40,
        cause="NORMAL_CLEARING",
        extension="101",
        recordingfile="x.wav",
        status="ANSWERED",
        phones=("0899888999", "+84899888999"),
        phone_prefixes=("09", "+849"),
        direction=1,
    )
    for label, filters in (("no filter", SearchFilters()), ("every filter", every)):
        month = (moment, datetime(2030, 1, 1, tzinfo=UTC))
        page = page_query(TABLE, "t.example", filters, tz=TZ, limit=10, offset=5, desc=True, window=month)
        run(db, f"page ({label})", page)
        run(db, f"total ({label})", month_counts_query(TABLE, "t.example", filters))
        after = (moment, UUID(first["id"]))
        forward = scroll_query(TABLE, "t.example", filters, tz=TZ, limit=10, desc=False, after=after)
        run(db, f"scroll ({label})", forward)
        window = (moment, datetime(2030, 1, 1, tzinfo=UTC))
        run(
            db,
            f"scroll window ({label})",
            scroll_query(TABLE, "t.example", filters, tz=TZ, limit=10, desc=True, after=after, window=window),
        )
        for group in GROUP_BY:
            run(db, f"stats by {group} ({label})", stats_query(TABLE, "t.example", filters, group_by=group, tz=TZ))
        end = export_window_end_query(TABLE, "t.example", filters, desc=True, after=after, rows=1_000)
        run(db, f"export window end ({label})", end)
        exported = export_query(TABLE, "t.example", filters, tz=TZ, desc=True, after=after, last=FIRST_KEY)
        run(db, f"export window, CSV ({label})", exported)
        run(db, f"export window, JSONEachRow ({label})", exported, "JSONEachRow")
    everything = export_query(TABLE, "t.example", SearchFilters(), tz=TZ, desc=False, after=None, last=LAST_KEY)
    lines = run(db, "export, every record", everything, "JSONEachRow").splitlines()
    if len(lines) != len(rows) or orjson.loads(lines[0])["id"] != min(rows, key=_sort_key)["id"]:
        sys.exit("the export did not return every record in list order with the API's field names")
    phone = SearchFilters(phones=("0899888999", "+84899888999"))
    run(db, "phone keys", phone_keys_query(TABLE, "t.example", phone, desc=True, after=None, keys=11))
    candidates = [(moment, UUID(first["id"]))]
    by_keys = page_query(TABLE, "t.example", phone, tz=TZ, limit=10, offset=0, desc=True, phone_keys=candidates)
    run(db, "page of phone candidates", by_keys)
    total = month_counts_query(TABLE, "t.example", phone, by_candidates=False)
    run(db, "total of a phone search, from the tenant's range", total)
    ranged = stats_query(TABLE, "t.example", phone, group_by="status", tz=TZ, by_candidates=False)
    run(db, "stats of a phone search, from the tenant's range", ranged)
    if "marks" not in run(db, "tenant granules", tenant_granules_query(TABLE, "t.example", every), "TSVWithNames"):
        sys.exit("EXPLAIN ESTIMATE did not name its marks")
    run(db, "tenant edge", tenant_edge_query(TABLE, "t.example", latest=True))
    found = run(db, "get by id", id_lookup_query(TABLE, "t.example", UUID(first["id"]), tz=TZ))
    by_call = run(db, "get by Call-ID", call_id_lookup_query(TABLE, "t.example", first["sip_call_id"], tz=TZ))
    if first["id"] not in found or first["id"] not in by_call:
        sys.exit("lookups did not find the inserted CDR")
    print("all checks passed")


def _sort_key(row: dict[str, Any]) -> tuple[datetime, int, int]:
    # The list order: time_started, then the id as ClickHouse orders UUIDs (second half first).
    number = UUID(row["id"]).int
    return row["time_started"], number & (2**64 - 1), number >> 64


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        out[key] = _stamp(value) if isinstance(value, datetime) else value
    return out


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


if __name__ == "__main__":
    main()
