"""Parse a batch of call-ended events inside ClickHouse: the fast path.

Validating every event with pydantic costs ~15 µs of Python per event, more than the
whole budget at 100,000 events/s. ClickHouse parses JSON in C++, off the GIL and on
both cores, so the batch goes to it as one Arrow column of raw messages and comes back
as typed columns plus a flag per row.

The flag is *sound, not complete*: a row is flagged ``ok`` only when its message is in
a plain canonical shape (no backslash escapes, lower-case UUID, RFC 3339 / naive /
integer-second timestamps, ...) for which these checks accept exactly what the
``CallEnded`` model accepts and yield the very values ``to_table`` would build. Any
other row -- an invalid event, or a valid one in an unusual shape -- goes to pydantic,
which decides between storing it and the dead-letter topic. The fast path never
rejects an event. ``tests/unit/test_sqlparse.py`` holds the two paths to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr.model.event import TENANT_PATTERN, CallEnded
from cdr.model.record import Direction

if TYPE_CHECKING:
    from cdr.store import Store
    from cdr.store.client import Param

# A message in fast-path shape is valid UTF-8 JSON without any backslash: every `"`
# then delimits a string and a string's raw text is its value.
# ClickHouse re-renders numbers in raw values: an integer beyond 64 bits comes back
# quoted, 5.0 comes back as 5. So a message with any number token that is not a plain
# integer of up to 18 digits (a fraction, an exponent, -0, 19+ digits) is left to
# pydantic. An object member's number follows a key's closing quote and a colon (no
# string can hold a quote here); numbers inside arrays are never one of our fields.
# (Starting the pattern with the quote lets RE2 skip ahead: 2x cheaper, ~0.5 us/row.)
# pydantic's JSON parser refuses nesting deeper than 200 and a leading byte-order mark;
# ClickHouse's accepts both. Fewer than 100 brackets in all is far from that depth.
# U+2028 and U+2029 come back from ClickHouse's raw JSON extraction as the escape
# "\u2028", where pydantic keeps the character: such messages go to pydantic.
_MESSAGE_OK = (
    "startsWith(v, '{') AND isValidUTF8(v) AND position(v, '\\\\') = 0 AND isValidJSON(v)"
    " AND position(v, '\\xE2\\x80\\xA8') = 0 AND position(v, '\\xE2\\x80\\xA9') = 0"
    " AND countSubstrings(v, '[') + countSubstrings(v, '{') < 100"
    " AND NOT match(v, '\"[[:space:]]*:[[:space:]]*(-?[0-9]{19}|-?[0-9]+[.eE]|-0)')"
)


def _max_length(field: str) -> int:
    """The model's own ``max_length`` for a string field, so the two parsers cannot drift."""
    for rule in CallEnded.model_fields[field].metadata:
        limit = getattr(rule, "max_length", None)
        if isinstance(limit, int):
            return limit
    raise ValueError(f"CallEnded.{field} has no max_length")


_REQUIRED_STRINGS = {f: _max_length(f) for f in ("tenant_id", "sip_call_id", "cause", "from_number", "to_number")}
_OPTIONAL_STRINGS = {f: _max_length(f) for f in ("extension", "receive_dest")}
_TIMESTAMPS = ("emitted_at", "time_started", "time_answered", "time_ended")
_FIELDS = (
    "event",
    "schema_version",
    *_REQUIRED_STRINGS,
    *_OPTIONAL_STRINGS,
    "id",
    "duration",
    "billsec",
    "direction",
    "recording_url",
    "status",
    *_TIMESTAMPS,
)
# Recording URLs whose file name ClickHouse's path() finds exactly as urllib does
# (a query string only after a path: path() of 'https://h?x=/y' is '/y').
_URL_SHAPE = "^https?://[A-Za-z0-9._~%!$&()*+,;=:@-]*(/[A-Za-z0-9._~%!$&()*+,;=:@/-]*(\\\\?[^#\\\\s\\\\[\\\\]]*)?)?$"
# Integer Unix seconds below this are seconds to pydantic; above 2e10 it reads milliseconds.
_MAX_INT_SECONDS = 10_000_000_000


@dataclass(frozen=True)
class NaiveTime:
    """How naive timestamps map to UTC on the fast path: a fixed offset, or not at all."""

    offset_s: int | None

    @classmethod
    def for_zone(cls, zone: ZoneInfo) -> NaiveTime:
        """A fixed offset when ``zone`` had one offset all through 2000-2099, else none
        (naive times in a zone with DST go to pydantic, which resolves gaps and folds)."""
        offsets = set()
        moment = datetime(2000, 1, 1, tzinfo=UTC)
        while moment.year < 2100:
            offset = moment.astimezone(zone).utcoffset()
            offsets.add(offset)
            moment += timedelta(days=29)
        if len(offsets) != 1:
            return cls(None)
        only = offsets.pop()
        return cls(int(only.total_seconds()) if only is not None else None)


def _optional_absent(field: str) -> str:
    return f"r_{field} IN ('', 'null')"


def _string_check(field: str, max_length: int) -> str:
    return f"startsWith(r_{field}, '\"') AND lengthUTF8(s_{field}) <= {max_length}"


# Timestamps in fast-path shape: date, clock, microseconds at most, then Z or +HH:MM or nothing.
_TIMESTAMP_SHAPE = (
    "^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
    "(?:\\\\.([0-9]{1,6}))?([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
)


def _timestamp_stages(field: str) -> list[list[str]]:
    """Columns of a timestamp, stage by stage (each reads only the stage before), ending
    in ``us_<field>``: microseconds since the epoch, UTC, NULL if not fast-path shape.

    ``parseDateTime`` refuses impossible calendar times (Feb 30, 24:00, second 60) but
    wraps past 2106, hence the year bound; no offset means the fixed ``naive_offset_s``;
    an integer of up to ten digits is Unix seconds. Regexes keep the expression count
    low: ClickHouse plans every function call of every query anew (~0.05 ms each), which
    a batch of rows pays once."""
    g, seconds = f"groups_{field}", f"seconds_{field}"
    clock = f"concat({g}[1], ' ', {g}[2])"
    zone = f"{g}[4]"
    return [
        [
            f"if(startsWith(r_{field}, '\"'), extractGroups(s_{field}, '{_TIMESTAMP_SHAPE}'), []) AS {g}",
            f"if(match(r_{field}, '^[0-9]{{1,10}}$'), toInt64OrNull(r_{field}) * 1000000, NULL) AS int_us_{field}",
        ],
        [
            f"parseDateTimeOrNull({clock}, '%Y-%m-%d %H:%i:%s', 'UTC') AS {seconds}",
            f"multiIf({zone} = '', {{naive_offset_s:Nullable(Int64)}}, {zone} IN ('Z', 'z'), 0,"
            f" if(startsWith({zone}, '-'), -60, 60)"
            f" * (toInt64OrZero(substring({zone}, 2, 2)) * 60 + toInt64OrZero(substring({zone}, 5, 2))))"
            f" AS offset_{field}",
        ],
        [
            f"multiIf(int_us_{field} IS NOT NULL, int_us_{field},"
            f" length({g}) = 4 AND {seconds} IS NOT NULL AND {g}[1] BETWEEN '1970' AND '2105',"
            f" (toInt64(toUnixTimestamp({seconds})) - offset_{field}) * 1000000"
            f" + toInt64OrZero(rightPad({g}[3], 6, '0')), NULL) AS us_{field}"
        ],
    ]


def _build_sql() -> str:
    def cols(items: list[str]) -> str:
        return ",\n    ".join(items)

    raws = [f"m['{f}'] AS r_{f}" for f in _FIELDS]
    texts = [f"substring(r_{f}, 2, greatest(length(r_{f}) - 2, 0)) AS s_{f}" for f in _FIELDS]
    numbers = [
        f"if(match(r_{f}, '^[0-9]{{1,10}}$'), toUInt32OrNull(r_{f}), NULL) AS {f}" for f in ("duration", "billsec")
    ]
    names = ", ".join(f"'{d.name.lower()}'" for d in Direction)
    codes = ", ".join(str(int(d)) for d in Direction)
    direction = f"transform(lower(s_direction), [{names}], [{codes}], 0) AS direction_code"
    per_field = [_timestamp_stages(f) for f in _TIMESTAMPS]
    time_stages = [[c for stages in per_field for c in stages[k]] for k in range(len(per_field[0]))]
    checks = [
        "message_ok",
        "keys_unique",
        "r_event = '\"call.ended\"'",
        "r_schema_version = '1'",
        *(_string_check(f, n) for f, n in _REQUIRED_STRINGS.items()),
        f"match(s_tenant_id, '{TENANT_PATTERN}')",
        *(f"({_optional_absent(f)} OR ({_string_check(f, n)}))" for f, n in _OPTIONAL_STRINGS.items()),
        "startsWith(r_id, '\"') AND toString(toUUIDOrZero(s_id)) = s_id",
        "duration IS NOT NULL AND billsec IS NOT NULL AND billsec <= duration",
        "startsWith(r_direction, '\"') AND direction_code != 0",
        f"({_optional_absent('recording_url')} OR ({_string_check('recording_url', _max_length('recording_url'))}"
        f" AND match(s_recording_url, '{_URL_SHAPE}')))",
        # Printable ASCII (valid UTF-8 without escapes: one byte per character) with no
        # space at either end, so upper() agrees with Python's strip().upper().
        f"{_string_check('status', _max_length('status'))} AND length(s_status) = lengthUTF8(s_status)"
        " AND length(s_status) >= 1"
        " AND trimBoth(s_status) = s_status",
        "us_emitted_at >= 0 AND us_time_started >= 0 AND us_time_ended >= 0",
        "us_emitted_at <= {latest_emitted_us:Int64}",
        f"({_optional_absent('time_answered')} OR us_time_answered >= 0)",
        "us_time_ended >= us_time_started",
        "(us_time_answered IS NULL OR (us_time_started <= us_time_answered AND us_time_answered <= us_time_ended))",
    ]
    ok = " AND ".join(f"({c})" for c in checks)
    empty, epoch = "''", "toDateTime64(0, 3, 'UTC')"

    def when_ok(expr: str, default: str, name: str) -> str:
        return f"if(ok, {expr}, {default}) AS {name}"

    def time_column(f: str) -> str:
        return f"fromUnixTimestamp64Milli(intDiv(ifNull(us_{f}, 0), 1000), 'UTC')"

    def optional_text(f: str, value: str) -> str:
        return f"if({_optional_absent(f)}, '', {value})"

    recording_file = "arrayElement(splitByChar('/', trimRight(path(s_recording_url), '/')), -1)"
    columns = [
        "n",
        "ok",
        when_ok("s_tenant_id", empty, "tenant_id"),
        when_ok("s_id", empty, "id"),
        when_ok("s_sip_call_id", empty, "sip_call_id"),
        when_ok("s_cause", empty, "cause"),
        "toUInt32(ifNull(duration, 0)) AS duration",
        "toUInt32(ifNull(billsec, 0)) AS billsec",
        "toUInt8(direction_code) AS direction",
        when_ok(optional_text("recording_url", "s_recording_url"), empty, "recording_url"),
        when_ok(optional_text("recording_url", recording_file), empty, "recording_file"),
        *(when_ok(optional_text(f, f"s_{f}"), empty, f) for f in _OPTIONAL_STRINGS),
        when_ok("s_from_number", empty, "from_number"),
        when_ok("s_to_number", empty, "to_number"),
        when_ok(time_column("time_started"), epoch, "time_started"),
        f"if(ok AND us_time_answered IS NOT NULL, {time_column('time_answered')}, NULL) AS time_answered",
        when_ok(time_column("time_ended"), epoch, "time_ended"),
        when_ok("upper(s_status)", empty, "status"),
        when_ok(time_column("emitted_at"), epoch, "emitted_at"),
    ]
    # One subquery per stage: each stage's columns are computed once and read by the
    # next, instead of ClickHouse inlining aliases into every branch that uses them.
    stages = [
        "SELECT n, assumeNotNull(v) AS v FROM Python(arrow_input)",
        f"SELECT n, {_MESSAGE_OK} AS message_ok, if(message_ok, JSONExtractKeysAndValuesRaw(v), []) AS kv",
        "SELECT n, message_ok, kv, arrayMap(x -> x.1, kv) AS keys,"
        " CAST((keys, arrayMap(x -> x.2, kv)), 'Map(String, String)') AS m",
        f"SELECT n, message_ok, length(keys) = length(arrayDistinct(keys)) AS keys_unique, {cols(raws)}",
        f"SELECT *, {cols(texts)}",
        f"SELECT *, {cols([*numbers, direction, *time_stages[0]])}",
        *(f"SELECT *, {cols(stage)}" for stage in time_stages[1:]),
        f"SELECT *, {ok} AS ok",
        f"SELECT {cols(columns)}",
    ]
    # Short-circuit evaluation re-evaluates shared sub-expressions in every branch (2.5x
    # slower here); every expression above is total (OrNull/OrZero), so it is turned off.
    # Small blocks bound the memory the ~100 intermediate columns take (no slower). Plan
    # optimizations have nothing to push down in a projection and cost ~25 ms per batch.
    settings = (
        "short_circuit_function_evaluation = 'disable', max_block_size = 4096, query_plan_enable_optimizations = 0"
    )
    return _compose(stages) + "\nSETTINGS " + settings


def _compose(stages: list[str]) -> str:
    sql = stages[0]
    for stage in stages[1:]:
        sql = f"{stage}\nFROM ({sql})"
    return sql


SQL = _build_sql()


class SqlParser:
    """Parses batches of raw messages in ClickHouse (see the module docstring)."""

    def __init__(self, store: Store, zone: ZoneInfo, min_batch: int) -> None:
        self._store = store
        self._params: dict[str, Param] = {"naive_offset_s": NaiveTime.for_zone(zone).offset_s}
        # Planning this query costs ~0.1 s whatever the batch: small batches are cheaper in pydantic.
        self.min_batch = min_batch

    async def parse(self, values: list[bytes], latest_emitted_at: datetime) -> pa.Table:
        """Columns ``n`` (position in ``values``), ``ok`` (1: the row is valid and its
        columns final) and the ``cdr`` columns of ``processor.SCHEMA``."""
        # One chunk. Several chunks made the query alone 1.5x faster (ClickHouse reads
        # each as its own stream, on both cores) but showed no gain end to end, and a
        # test run stalled once with them; not worth the doubt.
        data = pa.table({"n": pa.array(range(len(values)), pa.uint32()), "v": pa.array(values, pa.binary())})
        params = {**self._params, "latest_emitted_us": int(latest_emitted_at.timestamp() * 1_000_000)}
        return await self._store.query_over_arrow(SQL, data, params)
