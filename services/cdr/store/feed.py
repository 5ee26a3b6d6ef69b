"""The change feed's reads (README, "Change feed"): SQL text and ``{name:Type}`` parameters,
and the rows as ``Change``s. Pure: no I/O.

A position is one offset per source partition (Kafka's partition and offset of the event;
``cdr import`` rows are partition -1). A read returns the rows past a position in
``(source_partition, source_offset)`` order; because every partition's rows become visible
in offset order, a reader that saw offset o of partition p has seen every offset below it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cdr.store.client import Param
from cdr.store.queries import TIME_FORMAT, Query

# The source partition of `cdr import` rows, whose offsets are batch_start_ms * ROWS_PER_MS + row.
IMPORT_PARTITION = -1
ROWS_PER_MS = 1_000_000
# An import batch is read only this long after its stamp: its insert is visible by then
# (a batch of 20,000 rows is stored in well under a second).
IMPORT_HORIZON_S = 10
# A poll across all tenants reads only parts whose ingested_at is at most this much older
# than the poll before it: an insert is visible within this time of its stamp.
HUB_LOOKBACK_S = 60
# Partitions a cursor may name (a topic of more is not ours).
MAX_PARTITIONS = 4096
# Tenants a read across tenants names at most; with more it reads every tenant's rows. A
# server takes a long parameter as a form field, capped at 128 KiB (http_max_field_value_size):
# 500 tenant ids stay under it however long (up to 200 characters) they are.
MAX_NAMED_TENANTS = 500
# The feed's tables: the changes, and the first and newest version of each call, sorted by
# (tenant_id, id) so that a lookup of one read's ids reads its tenants' ranges only (0008).
CHANGES_TABLE = "cdr_changes"
VERSIONS_TABLE = "cdr_versions"

Offsets = dict[int, int]

_COLUMNS = (
    "tenant_id, toString(id), sip_call_id, cause, duration, billsec, CAST(direction, 'UInt8'), recording_url,"
    " extension, from_number, to_number, receive_dest, toUnixTimestamp64Milli(time_started),"
    " toUnixTimestamp64Milli(time_answered), toUnixTimestamp64Milli(time_ended), status,"
    " toUnixTimestamp64Milli(emitted_at), source_partition, source_offset"
)
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # what queries.TIME_FORMAT makes ClickHouse write
# The three times as the list API shows them in the reader's zone, and the version's
# seconds: made by ClickHouse, as the list's times are, instead of per item in Python.
_LOCAL_COLUMNS = (
    f", formatDateTime(time_started, '{TIME_FORMAT}', {{tz:String}})"
    f", if(isNull(time_answered), '', formatDateTime(assumeNotNull(time_answered), '{TIME_FORMAT}', {{tz:String}}))"
    f", formatDateTime(time_ended, '{TIME_FORMAT}', {{tz:String}})"
    ", formatDateTime(emitted_at, '%Y-%m-%dT%H:%i:%S', 'UTC')"
)


@dataclass(frozen=True)
class FeedFilters:
    """The filters a feed reader may give; None: any."""

    direction: int | None = None
    status: str | None = None
    extension: str | None = None
    cause: str | None = None

    def canonical(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if value is not None}

    @classmethod
    def from_canonical(cls, data: Mapping[str, Any]) -> FeedFilters:
        return cls(**data)

    def match(self, change: Change) -> bool:
        return (
            (self.direction is None or change.direction == self.direction)
            and (self.status is None or change.status == self.status)
            and (self.extension is None or change.extension == self.extension)
            and (self.cause is None or change.cause == self.cause)
        )


@dataclass
class Change:
    """One stored version, as read from the feed table (times in UTC milliseconds)."""

    tenant: str
    id: str
    sip_call_id: str
    cause: str
    duration: int
    billsec: int
    direction: int
    recording_url: str
    extension: str
    from_number: str
    to_number: str
    receive_dest: str
    time_started_ms: int
    time_answered_ms: int | None
    time_ended_ms: int
    status: str
    emitted_ms: int
    partition: int
    offset: int
    change: str = ""  # "created" | "corrected" once settled; "" for a stale version
    # time_started, time_answered, time_ended as the API shows them in zone ``local_zone``,
    # and emitted_at's seconds as RFC 3339 UTC.
    local: tuple[str, str, str, str] | None = None
    local_zone: str = ""
    _rendered: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, row: list[Any] | tuple[Any, ...], zone: str | None = None) -> Change:
        """A row of a read; ``zone``: the one the read was made for (``tenant_read``), whose
        last four columns are the times shown in it and the version's seconds."""
        if zone is None:
            return cls(*row)
        change = cls(*row[:-4])
        change.local, change.local_zone = (row[-4], row[-3], row[-2], row[-1]), zone
        return change

    def render(self, zone: ZoneInfo) -> dict[str, Any]:
        """The item: the record as GET /v1/cdr/{id} shows it in ``zone``, plus ``version``
        (emitted_at, RFC 3339 UTC) and ``change``. Made once per zone (a change fans out
        to every stream of its tenant)."""
        key = zone.key
        item = self._rendered.get(key)
        if item is None:
            if self.local is not None and key == self.local_zone:
                started, answered, ended, seconds = self.local
                version = f"{seconds}.{self.emitted_ms % 1000:03d}Z"
            else:
                started = _local(self.time_started_ms, zone)
                answered = "" if self.time_answered_ms is None else _local(self.time_answered_ms, zone)
                ended = _local(self.time_ended_ms, zone)
                version = version_text(self.emitted_ms)
            item = {
                "id": self.id,
                "sip_call_id": self.sip_call_id,
                "cause": self.cause,
                "duration": int(self.duration),
                "billsec": int(self.billsec),
                "direction": int(self.direction),
                "recording_url": self.recording_url,
                "extension": self.extension,
                "from_number": self.from_number,
                "to_number": self.to_number,
                "receive_dest": self.receive_dest,
                "time_started": started,
                "time_answered": answered,
                "time_ended": ended,
                "status": self.status,
                "version": version,
                "change": self.change,
            }
            self._rendered[key] = item
        return item


def _local(ms: int, zone: ZoneInfo) -> str:
    """``ms`` (UTC) as the API shows it in ``zone``. Every item a stream or a webhook sends
    shows three: the zone's offset is looked up once per quarter hour of UTC (when it is
    the same at both ends of it) instead of per time: 1.6 instead of 3.0 us a time."""
    seconds = ms // 1000
    offset = _offset_s(zone, seconds // _OFFSET_SPAN_S)
    if offset is None:
        return datetime.fromtimestamp(ms / 1000, tz=zone).strftime(_TIME_FORMAT)
    return _wall(seconds + offset, " ")


def _wall(seconds: int, between: str) -> str:
    """A wall clock ``seconds`` past its epoch as ``YYYY-MM-DD`` ``between`` ``HH:MM:SS``."""
    day, second = divmod(seconds, 86_400)
    return f"{_day_text(day)}{between}{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"


@functools.lru_cache(maxsize=4_096)
def _day_text(day: int) -> str:
    """The ``day``-th day since the epoch (of a local clock) as ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


# Offsets change at whole quarter hours of UTC in every zone in use (rules say local
# :00 or :30, offsets are whole quarter hours); a span with a change inside is not cached.
_OFFSET_SPAN_S = 900


@functools.lru_cache(maxsize=16_384)
def _offset_s(zone: ZoneInfo, span: int) -> int | None:
    """The zone's UTC offset (seconds) throughout the ``span``-th quarter hour since the
    epoch; None when it changes within it."""
    start = span * _OFFSET_SPAN_S
    first = datetime.fromtimestamp(start, tz=zone).utcoffset()
    last = datetime.fromtimestamp(start + _OFFSET_SPAN_S - 1, tz=zone).utcoffset()
    if first is None or first != last:
        return None
    return int(first.total_seconds())


def version_text(ms: int) -> str:
    """emitted_at as RFC 3339 UTC with milliseconds: ``2026-12-07T10:00:00.123Z``."""
    seconds, milli = divmod(ms, 1000)
    return f"{_wall(seconds, 'T')}.{milli:03d}Z"


def _after(position: Mapping[int, int], params: dict[str, Param]) -> str:
    """Rows past ``position``: each named partition past its offset, any other whole.
    Constants per partition, so that each is a seek on the sort key."""
    tests = []
    for i, (partition, offset) in enumerate(sorted(position.items())):
        tests.append(f"(source_partition = {{p{i}:Int32}} AND source_offset > {{o{i}:Int64}})")
        params[f"p{i}"], params[f"o{i}"] = partition, offset
    return "(" + " OR ".join([*tests, _unnamed(position, params)]) + ")"


def _unnamed(position: Mapping[int, int], params: dict[str, Param]) -> str:
    """The partitions ``position`` does not name, as ranges between those it names: a
    seek on the sort key each (``NOT IN`` reads the partition column of every row)."""
    known = sorted(position)
    if not known:
        return "1"
    ranges = ["source_partition < {k0:Int32}", f"source_partition > {{k{len(known) - 1}:Int32}}"]
    for i, partition in enumerate(known):
        params[f"k{i}"] = partition
        if i and partition - known[i - 1] > 1:
            ranges.append(f"(source_partition > {{k{i - 1}:Int32}} AND source_partition < {{k{i}:Int32}})")
    return "(" + " OR ".join(ranges) + ")"


def _visible(params: dict[str, Param], *, now_ms: int, horizon_s: int | None) -> list[str]:
    """Only rows every reader can see by now: imported ones ``IMPORT_HORIZON_S`` after
    their stamp; on a cluster (``horizon_s``: the replica delay a read tolerates) only rows
    that old, which every replica answering a read holds (it refuses the read otherwise)."""
    lag_s = horizon_s or 0
    params["import_through"] = (now_ms - (IMPORT_HORIZON_S + lag_s) * 1000) * ROWS_PER_MS
    clauses = [f"(source_partition != {IMPORT_PARTITION} OR source_offset <= {{import_through:Int64}})"]
    if lag_s:
        clauses.append("ingested_at <= now64(3) - toIntervalSecond({horizon:UInt32})")
        params["horizon"] = lag_s
    return clauses


@dataclass(frozen=True)
class FeedRead:
    """A read of changes, and the lookup of their calls' versions (``versions_read``'s
    rows) that runs beside it: the lookup takes the ids from the same read, narrowed to
    the id column, so the two need not wait for each other (``cdr.store.feed_hub.read_settled``)."""

    rows: Query
    versions: Query
    changes_table: str
    versions_table: str


def versions_lookup(table: str, calls: str) -> str:
    """The first and newest emitted_at of the live versions of the calls the condition
    ``calls`` selects (it names their tenants: the table is sorted by tenant first), one row
    per call, as ``versions_of`` reads them."""
    return (
        "SELECT tenant_id, toString(id), toUnixTimestamp64Milli(min(first)), toUnixTimestamp64Milli(max(newest))"
        f" FROM {table} WHERE {calls} GROUP BY tenant_id, id"
    )


def _feed_read(
    table: str, versions_table: str, columns: str, body: str, tenant_filter: str, params: dict[str, Param]
) -> FeedRead:
    lookup = versions_lookup(versions_table, f"{tenant_filter} AND id IN (SELECT id {body})")
    return FeedRead(Query(f"SELECT {columns} {body}", params), Query(lookup, params), table, versions_table)


def tenant_read(
    table: str,
    versions_table: str,
    tenant: str,
    position: Mapping[int, int],
    *,
    limit: int,
    now_ms: int,
    horizon_s: int | None,
    zone: str | None = None,
) -> FeedRead:
    """The tenant's next ``limit`` rows past ``position``, in (partition, offset) order.

    One read in the sort key's order, stopped at ``limit``: a page costs its own rows, not
    the backlog behind it. (It took a fair share of each partition with ``LIMIT n BY
    source_partition``, which read and sorted every row past the position first: 3-7x
    slower a page, and growing with the backlog; bench/RESULTS.md, issue 27.) A backlog in
    one partition is read before the partitions after it; every one is read to its end.
    ``zone``: the rows end with the times shown in it and the version's seconds (``Change.of``)."""
    params: dict[str, Param] = {"tenant": tenant, "limit": limit}
    clauses = [
        "tenant_id = {tenant:String}",
        _after(position, params),
        *_visible(params, now_ms=now_ms, horizon_s=horizon_s),
    ]
    columns = _COLUMNS
    if zone is not None:
        columns += _LOCAL_COLUMNS
        params["tz"] = zone
    body = (
        f"FROM {table} WHERE {' AND '.join(clauses)}"
        " ORDER BY tenant_id, source_partition, source_offset LIMIT {limit:UInt32}"
    )
    return _feed_read(table, versions_table, columns, body, "tenant_id = {tenant:String}", params)


def hub_read(
    table: str,
    tenants: Collection[str],
    position: Mapping[int, int],
    *,
    low_ms: int,
    limit: int,
    now_ms: int,
    horizon_s: int | None,
) -> Query:
    """The ``tenants``' rows past ``position`` among the parts stamped since ``low_ms`` (the
    day partitions and their ingested_at ranges prune the rest). Only the tenants someone
    listens to: the tenant leads the sort key, so a poll reads in proportion to what is
    listened to, not to everything ingested (past ``MAX_NAMED_TENANTS`` tenants, every
    tenant's rows: the caller keeps those it wants). Their versions are looked up after it,
    for the rows it found (``versions_read``)."""
    params: dict[str, Param] = {"low": low_ms, "limit": limit}
    clauses = [
        _of_tenants(tenants, params),
        "ingested_at >= fromUnixTimestamp64Milli({low:Int64}, 'UTC')",
        _after(position, params),
        *_visible(params, now_ms=now_ms, horizon_s=horizon_s),
    ]
    return Query(
        f"SELECT {_COLUMNS} FROM {table} WHERE {' AND '.join(clauses)}"
        " ORDER BY source_partition, source_offset LIMIT {limit:UInt32}",
        params,
    )


def hub_start(table: str, *, low_ms: int, now_ms: int, horizon_s: int | None) -> Query:
    """Where a poll across all tenants starts: the last offset of each partition stamped since
    ``low_ms`` among the rows every reader can see by now. A subscriber's own read sees only
    those (``_visible``): a start past a row it cannot see yet (an import batch of the last
    seconds, a row younger than the replica horizon) would skip that row for good."""
    params: dict[str, Param] = {"low": low_ms}
    clauses = [
        "ingested_at >= fromUnixTimestamp64Milli({low:Int64}, 'UTC')",
        *_visible(params, now_ms=now_ms, horizon_s=horizon_s),
    ]
    return Query(
        f"SELECT source_partition, max(source_offset) FROM {table}"
        f" WHERE {' AND '.join(clauses)} GROUP BY source_partition",
        params,
    )


def tenant_start(table: str, tenant: str, since: datetime | None) -> Query:
    """Per partition of the tenant's changes: its last offset, and (``since``) the first
    offset stamped at or after ``since`` with how many there are."""
    params: dict[str, Param] = {"tenant": tenant}
    if since is None:
        return Query(
            f"SELECT source_partition, max(source_offset), 0, 0 FROM {table}"
            " WHERE tenant_id = {tenant:String} GROUP BY source_partition",
            params,
        )
    params["since"] = since
    after = "ingested_at >= {since:DateTime64(3, 'UTC')}"
    return Query(
        f"SELECT source_partition, max(source_offset), minIf(source_offset, {after}), countIf({after}) FROM {table}"
        " WHERE tenant_id = {tenant:String} GROUP BY source_partition",
        params,
    )


def start_position(rows: Iterable[list[Any] | tuple[Any, ...]]) -> Offsets:
    """A position from ``tenant_start``'s rows: just before the first change since the
    time asked, or at the last one of a partition with none since (partitions not named
    start at their beginning)."""
    position: Offsets = {}
    for partition, last, first_since, since_count in rows:
        position[int(partition)] = int(first_since) - 1 if int(since_count) else int(last)
    return position


def versions_read(changes_table: str, versions_table: str, changes: Iterable[Change]) -> Query:
    """The first and newest emitted_at of the live versions of ``changes``' calls: for a hub
    poll's changes, and for those whose own version the lookup beside their read
    (``FeedRead.versions``) did not see. By their tenants (the table is sorted by tenant
    first), and their ids as those of the changes table's rows where the changes lie: per
    partition, the range of their offsets (a superset; the other calls' versions go unused).
    Not a list of the ids: a poll of thousands of changes would send it as a form field,
    which a server caps (http_max_field_value_size, 128 KiB: ~3,300 ids), and the poll would
    fail again and again; binding it also cost ~4 us an id."""
    tenants: set[str] = set()
    ranges: dict[int, tuple[int, int]] = {}
    for c in changes:
        tenants.add(c.tenant)
        low, high = ranges.get(c.partition, (c.offset, c.offset))
        ranges[c.partition] = (min(low, c.offset), max(high, c.offset))
    params: dict[str, Param] = {}
    of_tenants = _of_tenants(tenants, params)
    where = []
    for i, (partition, (low, high)) in enumerate(sorted(ranges.items())):
        where.append(
            f"(source_partition = {{p{i}:Int32}} AND source_offset BETWEEN {{lo{i}:Int64}} AND {{hi{i}:Int64}})"
        )
        params[f"p{i}"], params[f"lo{i}"], params[f"hi{i}"] = partition, low, high
    rows = f"SELECT id FROM {changes_table} WHERE {of_tenants} AND ({' OR '.join(where)})"
    return Query(versions_lookup(versions_table, f"{of_tenants} AND id IN ({rows})"), params)


def _of_tenants(tenants: Collection[str], params: dict[str, Param]) -> str:
    """The condition that rows are of ``tenants``: by name, or, past ``MAX_NAMED_TENANTS``,
    any tenant's (the caller takes those it wants)."""
    if len(tenants) > MAX_NAMED_TENANTS:
        return "1"
    params["tenants"] = sorted(tenants)
    return "tenant_id IN {tenants:Array(String)}"


Versions = dict[tuple[str, str], tuple[int, int]]


def versions_of(rows: Iterable[list[Any] | tuple[Any, ...]]) -> Versions:
    return {(str(t), str(i)): (int(first), int(newest)) for t, i, first, newest in rows}


def unseen(changes: Iterable[Change], versions: Versions) -> list[Change]:
    """The changes whose own version ``versions`` does not hold (its newest is older, or the
    call is missing): the lookup beside the read ran on another snapshot (a row stored
    between the two). Looked up again after the read, they are as a lookup after it finds
    them: a newer version delivered before (stored before this read began) is then seen."""
    return [c for c in changes if versions.get((c.tenant, c.id), (0, -1))[1] < c.emitted_ms]


def settle(changes: list[Change], versions: Versions) -> None:
    """Mark what to deliver: a version older than the newest of its call (stored, or later
    in this read) is stale (``change`` = ""): the newest is delivered at its own position,
    before or after, so no version comes after a newer one. Each other one is ``created``
    when it is its call's first version, else ``corrected``."""
    newest_here: dict[tuple[str, str], int] = {}
    for c in changes:
        key = (c.tenant, c.id)
        newest_here[key] = max(newest_here.get(key, c.emitted_ms), c.emitted_ms)
    for c in changes:
        key = (c.tenant, c.id)
        first, newest = versions.get(key, (c.emitted_ms, c.emitted_ms))
        if c.emitted_ms < max(newest, newest_here[key]):
            c.change = ""
        else:
            c.change = "created" if c.emitted_ms <= first else "corrected"
