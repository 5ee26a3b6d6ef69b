"""Which filters a FINAL read applies before the versions are merged (PREWHERE): only
those on the sort key's columns, which every version of a record shares. A filter on
any other column there would drop a record's newest version and let an older one,
matching the filter, stand in for it (tests/api/test_corrections.py shows that for
status through the API; this test covers every read and every filter)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from uuid import UUID

import pytest

from cdr.store.queries import (
    Query,
    SearchFilters,
    call_id_lookup_query,
    export_query,
    export_window_end_query,
    id_lookup_query,
    month_counts_query,
    page_query,
    scroll_query,
    stats_query,
)

KEY = (datetime(2024, 5, 1, tzinfo=UTC), UUID(int=7))
WHEN = datetime(2024, 5, 2, tzinfo=UTC)
EVERY_FILTER = SearchFilters(
    start=WHEN,
    end=WHEN,
    start_ended=WHEN,
    end_ended=WHEN,
    duration=5,
    min_duration=1,
    max_duration=9,
    cause="NORMAL_CLEARING",
    extension="101",
    recordingfile="a.wav",
    status="ANSWERED",
    phones=("+84912345678",),
    phone_prefixes=("0912",),
    direction=1,
)
SORT_KEY = {"tenant_id", "time_started", "id"}


def _reads() -> list[Query]:
    f, window = EVERY_FILTER, (WHEN, WHEN)
    return [
        page_query("db.cdr", "t", f, tz="UTC", limit=50, offset=0, desc=True, window=window, phone_keys=[KEY]),
        page_query("db.cdr", "t", f, tz="UTC", limit=50, offset=0, desc=False, phone_keys=300),
        scroll_query("db.cdr", "t", f, tz="UTC", limit=50, desc=True, after=KEY, window=window, phone_keys=300),
        month_counts_query("db.cdr", "t", f),
        stats_query("db.cdr", "t", f, group_by="day", tz="UTC"),
        export_window_end_query("db.cdr", "t", f, desc=False, after=KEY, rows=500),
        export_query("db.cdr", "t", f, tz="UTC", desc=True, after=KEY, last=KEY),
        id_lookup_query("db.cdr", "t", UUID(int=1), tz="UTC"),
        call_id_lookup_query("db.cdr", "t", "abc@pbx", tz="UTC"),
    ]


def _columns(sql: str) -> set[str]:
    """The column names a clause list reads, its subqueries (which read other tables) and
    parameters left out."""
    depth, kept = 0, []
    for part in re.split(r"(\(SELECT|\(|\))", sql):
        if part == "(SELECT":
            depth += 1
        elif part == ")" and depth:
            depth -= 1
        elif depth == 0:
            kept.append(part)
    text = re.sub(r"\{[^}]*\}", " ", " ".join(kept))
    return set(re.findall(r"[a-z_]+", text)) - {"and", "or", "in"}


def _before_and_after_the_merge(sql: str) -> tuple[str, str]:
    """The PREWHERE and WHERE of a FINAL read: split at its own WHERE, not a subquery's."""
    rest = sql.split(" FINAL PREWHERE ", 1)[1]
    depth = 0
    for at, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and rest.startswith(" WHERE ", at):
            return rest[:at], rest[at + len(" WHERE ") :]
    raise AssertionError(f"no WHERE after the merge: {sql}")


@pytest.mark.parametrize("query", _reads(), ids=lambda q: q.sql.split(" ", 2)[1][:24])
def test_a_final_read_filters_before_the_merge_on_the_sort_key_only(query: Query) -> None:
    before, after = _before_and_after_the_merge(query.sql)
    assert _columns(before) <= SORT_KEY, before
    assert "tenant_id" in _columns(before)
    assert "superseded" in _columns(after), after


def test_the_columns_of_a_clause_leave_out_subqueries_and_parameters() -> None:
    clause = "tenant_id = {tenant:String} AND (time_started, id) IN (SELECT phone FROM k WHERE (status = 1))"
    assert _columns(clause) == {"tenant_id", "time_started", "id"}
    assert _columns("status = {status:String} AND (a OR b)") == {"status", "a", "b"}


def test_the_split_is_at_the_reads_own_where() -> None:
    sql = "SELECT x FROM t FINAL PREWHERE a = 1 AND (b, c) IN (SELECT b, c FROM k WHERE d = 2) WHERE e = 3 LIMIT 1"
    assert _before_and_after_the_merge(sql) == ("a = 1 AND (b, c) IN (SELECT b, c FROM k WHERE d = 2)", "e = 3 LIMIT 1")
