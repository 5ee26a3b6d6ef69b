"""How an export reads in keyset windows: each read is bounded by keys and by a row count,
never by time, so no hour of calls makes a bigger window."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from cdr.model.record import API_FIELDS
from cdr.store.queries import _API_COLUMNS, SearchFilters, export_query, export_window_end_query

KEY = (datetime(2024, 5, 1, tzinfo=UTC), UUID(int=7))


def test_a_window_ends_at_the_last_of_its_rows_after_the_previous_one() -> None:
    first = export_window_end_query("db.cdr", "t", SearchFilters(), desc=False, after=None, rows=500)
    assert "LIMIT {rows:UInt32}" in first.sql and first.params["rows"] == 500
    assert "after_ts" not in first.params
    nxt = export_window_end_query("db.cdr", "t", SearchFilters(status="BUSY"), desc=True, after=KEY, rows=500)
    assert (nxt.params["after_ts"], nxt.params["after_id"], nxt.params["status"]) == (*KEY, "BUSY")
    assert "id < {after_id:UUID}" in nxt.sql and "FINAL" in nxt.sql


def test_a_window_reads_between_two_keys_in_list_order() -> None:
    window = export_query("db.cdr", "t", SearchFilters(), tz="UTC", desc=False, after=KEY, last=KEY)
    assert "id > {after_id:UUID}" in window.sql and "id <= {last_id:UUID}" in window.sql
    assert "ORDER BY time_started ASC, id ASC" in window.sql
    first = export_query("db.cdr", "t", SearchFilters(), tz="UTC", desc=True, after=None, last=KEY)
    assert "after_ts" not in first.params and "id >= {last_id:UUID}" in first.sql


def test_the_export_columns_are_the_api_fields_in_order() -> None:
    assert tuple(name for name, _ in _API_COLUMNS) == API_FIELDS
