"""API parameters -> SQL text and ``{name:Type}`` parameters. Pure: no I/O.

Values never enter the SQL text: the text only varies by which filters are present.
Every query is confined to one tenant and reads with FINAL, so re-sent events
collapse to their newest version whatever the state of background merges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cdr.model.record import API_FIELDS
from cdr.store.client import Param

TIME_FORMAT = "%Y-%m-%d %H:%i:%S"

# Columns of an API record, in the document's order, formatted by ClickHouse in the
# tenant's timezone.
_API_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "toString(id)"),
    ("sip_call_id", "sip_call_id"),
    ("cause", "cause"),
    ("duration", "duration"),
    ("billsec", "billsec"),
    ("direction", "CAST(direction, 'UInt8')"),
    ("recording_url", "recording_url"),
    ("extension", "extension"),
    ("from_number", "from_number"),
    ("to_number", "to_number"),
    ("receive_dest", "receive_dest"),
    ("time_started", f"formatDateTime(time_started, '{TIME_FORMAT}', {{tz:String}})"),
    (
        "time_answered",
        f"if(isNull(time_answered), '', formatDateTime(assumeNotNull(time_answered), '{TIME_FORMAT}', {{tz:String}}))",
    ),
    ("time_ended", f"formatDateTime(time_ended, '{TIME_FORMAT}', {{tz:String}})"),
    ("status", "status"),
)
# Then the sort key, for the cursor.
_RECORD_COLUMNS = ", ".join(expr for _, expr in _API_COLUMNS) + ", toUnixTimestamp64Milli(time_started)"
# Named, for an export ClickHouse formats itself (JSONEachRow takes the names). The
# names shadow columns (time_started...): prefer_column_name_to_alias keeps WHERE and
# ORDER BY on the columns.
_EXPORT_COLUMNS = ", ".join(f"{expr} AS {name}" for name, expr in _API_COLUMNS)
_EXPORT_SETTINGS = (
    ", prefer_column_name_to_alias = 1, output_format_csv_crlf_end_of_line = 1,"
    " output_format_json_escape_forward_slashes = 0"
)
RECORD_WIDTH = 15  # the API fields; the last column is the cursor key

# The partition key (month of time_started) derives from the sort key, so every version
# of a record lies in one partition and FINAL need not merge across partitions.
_FINAL_SETTINGS = " SETTINGS do_not_merge_across_partitions_select_final = 1"
# The reads of a page, its total, a scroll batch, a lookup and a phone search touch a
# tenant's range or a few granules: one thread each, so that two cores serve two requests at
# once instead of every request splitting both (measured: a page with its total, 8 clients,
# 44 -> 68 req/s on 2 M CDRs; 1 client no slower beyond noise; bench/RESULTS.md). Stats and
# exports, which aggregate or stream whole ranges, keep the server's max_threads.
_ONE_THREAD = _FINAL_SETTINGS + ", max_threads = 1"
# Those that read records (a page, a scroll batch, a lookup, a phone search's keys and
# records) also take their blocks from the engine's cache of decompressed blocks, when it has
# one (the embedded engine's CDR_CLICKHOUSE_UNCOMPRESSED_CACHE_MB, a server's
# uncompressed_cache_size): such a read costs mostly decompressing one granule of each column
# it reads, the same few granules for the next request of that tenant (10 M CDRs: a page read
# again 25 -> 14 ms, a lookup by id 17.5 -> 12; bench/RESULTS.md, session 16). Not the totals,
# which read the key columns of the tenant's whole range and would push those granules out.
_SHORT = "max_threads = 1, use_uncompressed_cache = 1"
_SMALL_READ = _FINAL_SETTINGS + ", " + _SHORT


@dataclass(frozen=True)
class SearchFilters:
    """The normalized filters of a CDR search (all optional, combined with AND)."""

    start: datetime | None = None
    end: datetime | None = None
    start_ended: datetime | None = None
    end_ended: datetime | None = None
    duration: int | None = None
    min_duration: int | None = None
    max_duration: int | None = None
    cause: str | None = None
    extension: str | None = None
    recordingfile: str | None = None
    status: str | None = None
    phones: tuple[str, ...] | None = None
    phone_prefixes: tuple[str, ...] | None = None
    direction: int | None = None

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> SearchFilters:
        """Inverse of ``canonical`` (for filters carried by a verified cursor)."""
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name in ("start", "end", "start_ended", "end_ended"):
                values[name] = datetime.fromisoformat(value)
            elif isinstance(value, list):
                values[name] = tuple(value)
            else:
                values[name] = value
        return cls(**values)

    def canonical(self) -> dict[str, Any]:
        """A plain, comparable form (what a scroll cursor carries)."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if value is None:
                continue
            if isinstance(value, datetime):
                out[name] = value.isoformat()
            elif isinstance(value, tuple):
                out[name] = list(value)
            else:
                out[name] = value
        return out


@dataclass(frozen=True)
class Query:
    sql: str
    params: dict[str, Param]


# After FINAL (a filter on a column outside the sort key is applied to the merged rows):
# the version of a call that a correction moved away, or a stale one at another time
# (cdr.ingest.corrections), is never a record.
_LIVE = "superseded = 0"

# The clauses on (time_started, id) alone: a phone search applies them to its key table
# too, so that its keys, read in order with a limit, are the ones the read needs.
_START = "time_started >= {start:DateTime64(3, 'UTC')}"
_END = "time_started <= {end:DateTime64(3, 'UTC')}"
_WINDOW_LOW = "time_started >= {window_low:DateTime64(3, 'UTC')}"
_WINDOW_HIGH = "time_started < {window_high:DateTime64(3, 'UTC')}"
_AFTER_DESC = (
    "time_started <= {after_ts:DateTime64(3, 'UTC')}",
    "(time_started < {after_ts:DateTime64(3, 'UTC')} OR id < {after_id:UUID})",
)
_AFTER_ASC = (
    "time_started >= {after_ts:DateTime64(3, 'UTC')}",
    "(time_started > {after_ts:DateTime64(3, 'UTC')} OR id > {after_id:UUID})",
)
_THROUGH_DESC = (
    "time_started >= {last_ts:DateTime64(3, 'UTC')}",
    "(time_started > {last_ts:DateTime64(3, 'UTC')} OR id >= {last_id:UUID})",
)
_THROUGH_ASC = (
    "time_started <= {last_ts:DateTime64(3, 'UTC')}",
    "(time_started < {last_ts:DateTime64(3, 'UTC')} OR id <= {last_id:UUID})",
)
_ON_KEY = frozenset((_START, _END, _WINDOW_LOW, _WINDOW_HIGH, *_AFTER_DESC, *_AFTER_ASC, *_THROUGH_DESC, *_THROUGH_ASC))


_TENANT = "tenant_id = {tenant:String}"
_ID = "id = {id:UUID}"
# A phone search's candidates, (time_started, id) of its key table (``_phone_keys``).
_CANDIDATE_KEYS = "(time_started, id) IN "


def _final_from(table: str, clauses: list[str]) -> str:
    """``FROM table FINAL`` under ``clauses``: those on sort-key columns (the tenant, time
    bounds, a cursor's position, candidate keys, an id) as PREWHERE, which ClickHouse
    applies before FINAL merges the versions; the others after it, on the newest version.

    Every version of a record has the same key, so a filter on it keeps all or none of
    them: the same records either way. Its worth: FINAL merges every row read, and a
    tenant's range shares its first and last granule of each part with the tenants
    beside it (8,192 rows); before the merge those rows are dropped, so its cost follows
    the tenant's rows, not the parts' granules (a tenant's count on 10 M CDRs in 63 parts,
    35 -> 25 ms; bench/RESULTS.md, session 18)."""
    keyed = [c for c in clauses if c in _ON_KEY or c in (_TENANT, _ID) or c.startswith(_CANDIDATE_KEYS)]
    rest = [c for c in clauses if c not in keyed]
    return f"FROM {table} FINAL PREWHERE {' AND '.join(keyed)} WHERE {' AND '.join(rest)}"


def _where(tenant: str, f: SearchFilters) -> tuple[list[str], dict[str, Param]]:
    clauses = [_TENANT, _LIVE]
    params: dict[str, Param] = {"tenant": tenant}
    ranges = (
        ("start", _START),
        ("end", _END),
        ("start_ended", "time_ended >= {start_ended:DateTime64(3, 'UTC')}"),
        ("end_ended", "time_ended <= {end_ended:DateTime64(3, 'UTC')}"),
        ("duration", "duration = {duration:UInt32}"),
        ("min_duration", "duration > {min_duration:UInt32}"),
        ("max_duration", "duration <= {max_duration:UInt32}"),
        ("cause", "cause = {cause:String}"),
        ("extension", "extension = {extension:String}"),
        ("recordingfile", "recording_file = {recordingfile:String}"),
        ("status", "status = {status:String}"),
        ("direction", "CAST(direction, 'UInt8') = {direction:UInt8}"),
    )
    for name, clause in ranges:
        value = getattr(f, name)
        if value is not None:
            clauses.append(clause)
            params[name] = value
    if f.phones:
        # On the newest version (FINAL): a correction may have changed the number since
        # the key table proposed the call (``_phone_keys``).
        params["phones"] = list(f.phones)
        clauses.append("(from_e164 IN {phones:Array(String)} OR to_e164 IN {phones:Array(String)})")
    if f.phone_prefixes:
        names = [f"prefix{i}" for i in range(len(f.phone_prefixes))]
        for name, prefix in zip(names, f.phone_prefixes, strict=True):
            params[name] = prefix
        columns = ("from_number", "to_number")
        tests = [f"startsWith({column}, {{{name}:String}})" for column in columns for name in names]
        clauses.append("(" + " OR ".join(tests) + ")")
    return clauses, params


# A limited phone search reads its first candidates, (time_started, id) in list order,
# then the records by that list: the two in one statement (the keys as a subquery of the
# read, and again to count them) measured 44-56 ms against 28-30 ms for the two apart
# (bench/RESULTS.md, "Session 14"). Beyond this many keys, the read takes them as a
# subquery again: a list of ~72 bytes a key would pass a server's limit on a parameter's
# size (http_max_field_value_size, 128 KiB by default).
MAX_LISTED_KEYS = 1_500


def _candidates(table: str, clauses: list[str], *, desc: bool | None = None) -> str:
    """The key table's candidates of a phone search under the clauses on its columns; with
    ``desc``, the first ``{phone_keys:UInt64}`` in list order (a seek per form of the
    number, read in order, whatever the number's volume)."""
    keyed = " ".join(f"AND {c}" for c in clauses if c in _ON_KEY)
    sql = (
        f"SELECT time_started, id FROM {table}_key_by_phone "
        f"WHERE tenant_id = {{tenant:String}} AND phone IN {{phones:Array(String)}} {keyed}"
    )
    if desc is None:
        return sql
    direction = "DESC" if desc else "ASC"
    return sql + f" ORDER BY time_started {direction}, id {direction} LIMIT {{phone_keys:UInt64}}"


def _phone_keys(
    table: str,
    f: SearchFilters,
    clauses: list[str],
    params: dict[str, Param],
    keys: Sequence[Key] | int | None = None,
    *,
    desc: bool = False,
) -> None:
    """Confine a phone search to its candidates (``SearchFilters.phones``): ``keys`` as
    read by ``phone_keys_query``, or the first ``keys`` in list order (a number: too many
    to list), or all of them (None: a count, stats, an export)."""
    if not f.phones:
        return
    if isinstance(keys, int):
        clauses.append(f"{_CANDIDATE_KEYS}({_candidates(table, clauses, desc=desc)})")
        params["phone_keys"] = keys
    elif keys is not None:
        clauses.append(_CANDIDATE_KEYS + "{phone_keys:Array(Tuple(DateTime64(3, 'UTC'), UUID))}")
        params["phone_keys"] = list(keys)
    else:
        clauses.append(f"{_CANDIDATE_KEYS}({_candidates(table, clauses)})")


def phone_keys_query(
    table: str,
    tenant: str,
    f: SearchFilters,
    *,
    desc: bool,
    after: Key | None,
    keys: int,
    window: Window = (None, None),
    count: bool = False,
) -> Query:
    """The first ``keys`` candidates of a limited phone search in list order, or with
    ``count`` how many there are (at most ``keys``). Fewer than asked for: the search has
    them all; else the caller asks for more when too few of them are records (another
    filter left some out, or a correction moved or renumbered a call since)."""
    clauses, params = _where(tenant, f)
    _within(window, clauses, params)
    _beyond(after, clauses, params, desc=desc)
    sql = _candidates(table, clauses, desc=desc)
    if count:
        sql = f"SELECT count() FROM ({sql})"
    return Query(sql + " SETTINGS " + _SHORT, {**params, "phone_keys": keys})


def page_query(
    table: str,
    tenant: str,
    f: SearchFilters,
    *,
    tz: str,
    limit: int,
    offset: int,
    desc: bool,
    window: Window = (None, None),
    phone_keys: Sequence[Key] | int | None = None,
) -> Query:
    """A page in list order; ``offset`` counts from the start of ``window`` (``page_plan``:
    the months that hold the page, so that the read opens those months' parts only). A
    phone search reads the candidates ``phone_keys`` (``_phone_keys``)."""
    clauses, params = _where(tenant, f)
    _within(window, clauses, params)
    _phone_keys(table, f, clauses, params, phone_keys, desc=desc)
    direction = "DESC" if desc else "ASC"
    sql = (
        f"SELECT {_RECORD_COLUMNS} {_final_from(table, clauses)} "
        f"ORDER BY time_started {direction}, id {direction} "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt64}" + _SMALL_READ
    )
    return Query(sql, {**params, "tz": tz, "limit": limit, "offset": offset})


# group_by -> the SQL of its key (fixed text chosen by name, never the caller's string).
_GROUP_KEYS = {
    "hour": "formatDateTime(toStartOfHour(time_started, {tz:String}), '%Y-%m-%d %H:00:00', {tz:String})",
    "day": "formatDateTime(toDate(time_started, {tz:String}), '%Y-%m-%d')",
    "month": "formatDateTime(toStartOfMonth(time_started, {tz:String}), '%Y-%m')",
    "extension": "extension",
    "status": "status",
    "direction": "CAST(direction, 'UInt8')",
    "cause": "cause",
}
GROUP_BY = tuple(_GROUP_KEYS)
STAT_QUANTILES = (0.5, 0.9, 0.99)
# The response field of each quantile, in STAT_QUANTILES' order.
STAT_QUANTILE_FIELDS = tuple(f"duration_p{round(level * 100)}" for level in STAT_QUANTILES)
MAX_GROUPS = 10_000


def stats_query(
    table: str, tenant: str, f: SearchFilters, *, group_by: str, tz: str, by_candidates: bool = True
) -> Query:
    """Per group: calls, answered calls, their billsec, all billsec, exact duration
    quantiles (quantileExact: the value at index floor(level x n) of the sorted durations).
    FINAL, so re-sent and corrected events count once, as their newest version. A phone
    search reads its candidates' records, or with ``by_candidates`` False the tenant's
    range (``_phone_keys``; the same records either way)."""
    clauses, params = _where(tenant, f)
    if by_candidates:
        _phone_keys(table, f, clauses, params)
    levels = ", ".join(str(q) for q in STAT_QUANTILES)
    sql = (
        f"SELECT {_GROUP_KEYS[group_by]} AS grp, count(), countIf(status = 'ANSWERED'),"
        f" sumIf(billsec, status = 'ANSWERED'), sum(billsec), quantilesExact({levels})(duration)"
        f" {_final_from(table, clauses)} GROUP BY grp ORDER BY grp"
        " LIMIT {max_groups:UInt32}" + _FINAL_SETTINGS
    )
    return Query(sql, {**params, "tz": tz, "max_groups": MAX_GROUPS + 1})


def month_counts_query(table: str, tenant: str, f: SearchFilters, *, by_candidates: bool = True) -> Query:
    """The selected records per month (the table's partition, ``toYYYYMM(time_started)`` in
    UTC), each call once as its newest version: a page's total, and which months hold the
    page (``page_plan``). Grouped by the partition itself (``_partition_id``, no column
    read), so it costs what a bare count does. ``by_candidates``: as ``stats_query``."""
    clauses, params = _where(tenant, f)
    if by_candidates:
        _phone_keys(table, f, clauses, params)
    return Query(
        f"SELECT _partition_id, count() {_final_from(table, clauses)} GROUP BY _partition_id" + _ONE_THREAD,
        params,
    )


Window = tuple[datetime | None, datetime | None]


def month_window(month: int) -> Window:
    """``[first instant, first instant of the next month)`` of ``month`` (YYYYMM, UTC)."""
    year, number = divmod(month, 100)
    after = (year + 1, 1) if number == 12 else (year, number + 1)
    return datetime(year, number, 1, tzinfo=UTC), datetime(*after, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PagePlan:
    """Where a page lies: rows ``offset``.. of ``window`` in list order (``window`` None:
    past the end, nothing to read)."""

    total: int
    window: Window | None
    offset: int = 0


def page_plan(months: Iterable[Sequence[Any]], *, offset: int, limit: int, desc: bool) -> PagePlan:
    """From ``month_counts_query``'s rows: the total, the months that hold rows ``offset``
    to ``offset + limit`` of the list, and the page's offset within them."""
    counts = sorted(((int(month), int(n)) for month, n in months if int(n)), reverse=desc)
    total = sum(n for _, n in counts)
    before, first, last, start = 0, 0, 0, 0
    for month, n in counts:
        if not first and before + n > offset:
            first, start = month, offset - before
        if first:
            last = month
            if before + n >= offset + limit:
                break
        before += n
    if not first:
        return PagePlan(total, None)
    low, high = sorted((first, last))
    return PagePlan(total, (month_window(low)[0], month_window(high)[1]), start)


def _within(window: Window, clauses: list[str], params: dict[str, Param]) -> None:
    """Bound time_started to ``low <= t < high`` (either may be None)."""
    low, high = window
    if low is not None:
        clauses.append(_WINDOW_LOW)
        params["window_low"] = low
    if high is not None:
        clauses.append(_WINDOW_HIGH)
        params["window_high"] = high


Key = tuple[datetime, UUID]  # (time_started, id): a position in list order


def _beyond(after: Key | None, clauses: list[str], params: dict[str, Param], *, desc: bool) -> None:
    """Only records past ``after`` in list order (all when None)."""
    if after is None:
        return
    # The first clause alone selects an index range; the second breaks ties by id.
    clauses.extend(_AFTER_DESC if desc else _AFTER_ASC)
    params["after_ts"], params["after_id"] = after


def _through(last: Key, clauses: list[str], params: dict[str, Param], *, desc: bool) -> None:
    """Only records up to ``last`` in list order, ``last`` included."""
    clauses.extend(_THROUGH_DESC if desc else _THROUGH_ASC)
    params["last_ts"], params["last_id"] = last


def scroll_query(
    table: str,
    tenant: str,
    f: SearchFilters,
    *,
    tz: str,
    limit: int,
    desc: bool,
    after: Key | None,
    window: Window = (None, None),
    phone_keys: Sequence[Key] | int | None = None,
) -> Query:
    """The next ``limit`` records after a keyset position; fetches one extra to tell
    whether more remain. Seeks on the sort key, so depth costs nothing.

    ``window`` = (from, until) further bounds time_started to ``from <= t < until``
    (either may be None); the caller uses it to read one partition's worth first. A
    phone search reads the candidates ``phone_keys`` (``_phone_keys``).
    """
    clauses, params = _where(tenant, f)
    _within(window, clauses, params)
    _beyond(after, clauses, params, desc=desc)
    _phone_keys(table, f, clauses, params, phone_keys, desc=desc)
    direction = "DESC" if desc else "ASC"
    sql = (
        f"SELECT {_RECORD_COLUMNS} {_final_from(table, clauses)} "
        f"ORDER BY time_started {direction}, id {direction} LIMIT {{limit:UInt32}}" + _SMALL_READ
    )
    return Query(sql, {**params, "tz": tz, "limit": limit + 1})


def tenant_granules_query(table: str, tenant: str, f: SearchFilters) -> Query:
    """How many granules the tenant's range within the filters' time bounds spans, from the
    primary index alone (nothing is read): one row per table read, its granules (marks) last."""
    clauses, params = _where(tenant, SearchFilters(start=f.start, end=f.end))
    keyed = [c for c in clauses if c != _LIVE]
    # Not count(): a count the engine can answer from the parts' metadata estimates no read.
    return Query(f"EXPLAIN ESTIMATE SELECT tenant_id FROM {table} WHERE {' AND '.join(keyed)}", params)


def tenant_edge_query(table: str, tenant: str, *, latest: bool) -> Query:
    """The tenant's earliest (or latest) time_started, without FINAL: a superseded
    version or a tombstone (cdr.ingest.corrections) can only widen it, which costs the
    caller speed, never a record."""
    fn = "max" if latest else "min"
    return Query(
        f"SELECT {fn}(time_started), count() > 0 FROM {table} WHERE tenant_id = {{tenant:String}}",
        {"tenant": tenant},
    )


def id_lookup_query(table: str, tenant: str, id_: UUID, *, tz: str) -> Query:
    """One CDR by id. id is in the sort key, so its bloom filter prunes even under FINAL
    (every version of a record shares it): a few granules are read."""
    sql = f"SELECT {_RECORD_COLUMNS} {_final_from(table, [_TENANT, _ID, _LIVE])} LIMIT 1" + _SMALL_READ
    return Query(sql, {"tenant": tenant, "id": id_, "tz": tz})


def call_id_lookup_query(table: str, tenant: str, call_id: str, *, tz: str) -> Query:
    """The earliest CDR with this SIP Call-ID (one Call-ID can span several CDRs): the
    candidates' keys from the narrow key table, then their newest versions, whose Call-ID
    must still match (a correction may have changed it). Kept apart from the id lookup:
    an OR of the two would defeat both seeks."""
    candidates = (
        f"{_CANDIDATE_KEYS}(SELECT time_started, id FROM {table}_key_by_call_id "
        "WHERE tenant_id = {tenant:String} AND sip_call_id = {key:String})"
    )
    clauses = [_TENANT, "sip_call_id = {key:String}", _LIVE, candidates]
    sql = f"SELECT {_RECORD_COLUMNS} {_final_from(table, clauses)} ORDER BY time_started, id LIMIT 1" + _SMALL_READ
    return Query(sql, {"tenant": tenant, "key": call_id, "tz": tz})


def record(row: list[Any]) -> dict[str, Any]:
    """A result row as the API's record (the document's field order)."""
    out = dict(zip(API_FIELDS, row[:RECORD_WIDTH], strict=True))
    for name in ("duration", "billsec", "direction"):
        out[name] = int(out[name])
    return out


def export_window_end_query(
    table: str, tenant: str, f: SearchFilters, *, desc: bool, after: Key | None, rows: int
) -> Query:
    """Where the next export window ends: the key of the last of the (up to) ``rows``
    records that follow ``after`` in list order; no row when none follows. Reads only the
    key columns (and the version FINAL needs) of at most ``rows`` records, so a window is
    ``rows`` records however they spread over time (an hour of 200,000 calls included)."""
    clauses, params = _where(tenant, f)
    _beyond(after, clauses, params, desc=desc)
    _phone_keys(table, f, clauses, params)
    direction, back = ("DESC", "ASC") if desc else ("ASC", "DESC")
    sql = (
        f"SELECT time_started, id FROM (SELECT time_started, id {_final_from(table, clauses)}"
        f" ORDER BY time_started {direction}, id {direction} LIMIT {{rows:UInt32}})"
        f" ORDER BY time_started {back}, id {back} LIMIT 1" + _FINAL_SETTINGS
    )
    return Query(sql, {**params, "rows": rows})


def export_query(
    table: str, tenant: str, f: SearchFilters, *, tz: str, desc: bool, after: Key | None, last: Key
) -> Query:
    """One export window in list order: the records after ``after`` through ``last``, as
    API records for ClickHouse to format (CSV or JSONEachRow, named by the caller).

    Bounded by keys, not by a row LIMIT: ``last`` was the window's ``rows``-th record a
    moment ago, and a LIMIT would drop a record that was there all along if one was
    stored before it in between (the next window starts after ``last``). So a window
    holds its ``rows`` records plus any stored into its key range in that moment."""
    clauses, params = _where(tenant, f)
    _beyond(after, clauses, params, desc=desc)
    _through(last, clauses, params, desc=desc)
    _phone_keys(table, f, clauses, params)
    direction = "DESC" if desc else "ASC"
    sql = (
        f"SELECT {_EXPORT_COLUMNS} {_final_from(table, clauses)}"
        f" ORDER BY time_started {direction}, id {direction}" + _FINAL_SETTINGS + _EXPORT_SETTINGS
    )
    return Query(sql, {**params, "tz": tz})
