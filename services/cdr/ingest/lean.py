"""Validate a batch of call-ended events at pydantic-core speed: the fast path.

``CallEnded`` runs Python validators for every event (direction's case, status' case,
naive timestamps, the cross-field rules), and turning its datetimes into Arrow columns
costs as much again. Here every per-field rule runs inside pydantic-core on a
``TypedDict`` built from the model's own fields (same types, lengths, ranges,
patterns); timestamps stay strings of one plain shape that Arrow parses a column at a
time, and the cross-field rules run once per batch over Arrow columns.

The verdict is *sound, not complete*: a message is accepted here only when the model
would accept it with the very columns ``to_table`` builds; anything else -- an invalid
event, or a valid one in a shape this path does not take (integer or lower-case-``z``
timestamps, an upper-case UUID, a naive time in a zone with daylight saving) -- is left
to ``CallEnded``, which stores it or names each bad field for the dead-letter topic.
``tests/unit/test_lean.py`` holds the two paths to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, NotRequired, cast
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from cdr.ingest.processor import DIRECTION_CODE, PLAIN_URL, SCHEMA, TIME, URL_SCHEME, recording_file
from cdr.model.event import DURATION_TOLERANCE_S, MAX_CALL_S, STORE_END, CallEnded

_US = pa.timestamp("us", tz="UTC")
_NAIVE_US = pa.timestamp("us")


def _pattern(regex: str) -> Any:
    return Annotated[StrictStr, Field(pattern=regex)]


# The one timestamp shape taken here: RFC 3339 with "T" or " ", up to microseconds, with
# "Z" or an offset, or naive. Each part is range-checked by the pattern; what a pattern
# cannot see (February 30th) makes Arrow's parse fail, and the row goes to the model.
_D = "[0-9]"
_STAMP = (
    rf"^(?:19[7-9]{_D}|2[0-2]{_D}{_D})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]{_D}|3[01])"
    rf"[T ](?:[01]{_D}|2[0-3]):[0-5]{_D}:[0-5]{_D}(?:\.{_D}{{1,6}})?(?:Z|[+-](?:[01]{_D}|2[0-3]):[0-5]{_D})?$"
)
_OFFSET_SUFFIX = rf"(?:Z|[+-]{_D}{_D}:{_D}{_D})$"
_OVERRIDES: dict[str, Any] = {
    # The model lower-cases direction before checking it; only ASCII letters lower-case to
    # these words, so spelling out each letter's two cases accepts exactly what it accepts.
    "direction": _pattern(r"^(?:(?:[Ii][Nn]|[Oo][Uu][Tt])[Bb][Oo][Uu][Nn][Dd]|[Ll][Oo][Cc][Aa][Ll])$"),
    # The canonical spelling is its own ``str(UUID(...))``: kept as a string, no UUID object.
    "id": _pattern(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    "emitted_at": _pattern(_STAMP),
    "time_started": _pattern(_STAMP),
    "time_answered": _pattern(_STAMP) | None,
    "time_ended": _pattern(_STAMP),
}


def _lean_type() -> Any:
    """A TypedDict with the model's fields and per-field rules (its single source)."""
    fields: dict[str, Any] = {}
    for name, info in CallEnded.model_fields.items():
        annotation: Any = _OVERRIDES.get(name)
        if annotation is None:
            annotation = info.annotation
            if info.metadata:
                annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = annotation if info.is_required() else NotRequired[annotation]
    return TypedDict("LeanCallEnded", fields)  # type: ignore[operator]


_ADAPTER: TypeAdapter[dict[str, Any]] = TypeAdapter(_lean_type())


@dataclass(frozen=True)
class NaiveTimes:
    """How naive times become UTC here: the zone's one offset over [since, until), both
    as naive local microseconds. Outside that span (or in a zone whose offset changes
    within the years this path takes) naive times are left to the model."""

    offset_us: int
    since_us: int
    until_us: int

    @classmethod
    @cache  # one walk per zone and process, whatever number of tenants share it
    def for_zone(cls, zone: ZoneInfo) -> NaiveTimes:
        """Walks back a day at a time from 2100 to the zone's last offset change."""
        end = datetime(2100, 1, 1, tzinfo=UTC)
        offset = end.astimezone(zone).utcoffset() or timedelta(0)
        moment = end
        day = timedelta(days=1)
        while moment > datetime(1970, 1, 1, tzinfo=UTC):
            moment -= day
            if moment.astimezone(zone).utcoffset() != offset:
                moment += 2 * day  # a day's margin past the change, in either reading of local time
                break
        local_epoch = datetime(1970, 1, 1, tzinfo=UTC)

        def local_us(t: datetime) -> int:
            return (t + offset - local_epoch) // timedelta(microseconds=1)

        return cls(offset // timedelta(microseconds=1), local_us(moment), local_us(end - day))


@dataclass(frozen=True)
class Parsed:
    """``rows``: the accepted events as ``cdr`` columns, with ``n`` (their index in the
    batch) first; ``rest``: indices of the messages left to the model, in order."""

    rows: pa.Table
    rest: list[int]


class LeanParser:
    """The fast path: naive timestamps read in their tenant's zone of ``tenant_zones``, else
    in ``zone``; a call at most ``max_call_s`` long."""

    def __init__(
        self, zone: ZoneInfo, tenant_zones: Mapping[str, ZoneInfo] | None = None, max_call_s: int = MAX_CALL_S
    ) -> None:
        self._naive = NaiveTimes.for_zone(zone)
        self._max_call_s = max_call_s
        # The listed tenants, and each one's rule at the same index.
        listed = sorted((tenant_zones or {}).items())
        self._tenants = pa.array([tenant for tenant, _ in listed], pa.string())
        rules = [NaiveTimes.for_zone(z) for _, z in listed]
        self._rules = [pa.array([getattr(r, name) for r in rules], pa.int64()) for name in _RULE_PARTS]

    def parse(self, values: list[bytes], latest_emitted_at: datetime) -> Parsed:
        validate = _ADAPTER.validate_json
        events: list[dict[str, Any]] = []
        positions: list[int] = []
        rest: list[int] = []
        for n, value in enumerate(values):
            try:
                events.append(validate(value))
            except ValidationError:
                rest.append(n)
            else:
                positions.append(n)
        if not events:
            return Parsed(_WITH_POSITION.empty_table(), rest)
        table, refused = self._columns(events, positions, latest_emitted_at)
        if refused:
            rest = sorted(rest + refused)
        return Parsed(table, rest)

    def _columns(self, e: list[dict[str, Any]], positions: list[int], latest: datetime) -> tuple[pa.Table, list[int]]:
        """The events' columns, less the rows a cross-field rule (or a time this path does
        not take) refuses; the refused rows' positions."""
        raw = pa.Table.from_pylist(e, schema=_RAW).combine_chunks()  # column by column in C++
        refusals: list[pa.Array] = []
        rule = self._naive_rule(raw.column("tenant_id"))
        emitted, started, answered, ended = (self._utc(raw.column(name), rule, refusals) for name in _TIMES)
        durations, billsecs = raw.column("duration"), raw.column("billsec")
        span_us = pc.subtract(ended.cast(pa.int64()), started.cast(pa.int64()))
        slack_us = pc.multiply(pc.add(durations.cast(pa.int64()), DURATION_TOLERANCE_S), 1_000_000)
        refusals += [
            pc.greater(billsecs, durations),
            pc.less(ended, started),
            pc.less(answered, started),
            pc.greater(answered, ended),
            pc.greater(emitted, pa.scalar(latest, _US)),
            # Arrow truncates a time before 1970 toward zero when it drops the
            # microseconds; to_table floors it.
            pc.less(pc.min_element_wise(*(t.cast(pa.int64()) for t in (emitted, started, answered, ended))), 0),
            # The years the shape takes end in 2299 of local time, which an offset can move past.
            pc.greater_equal(
                pc.max_element_wise(*(t.cast(pa.int64()) for t in (emitted, started, answered, ended))), _END_US
            ),
            pc.greater(span_us, self._max_call_s * 1_000_000),
            pc.greater(durations, self._max_call_s),
            pc.greater(span_us, slack_us),
        ]
        refused = refusals[0]
        for more in refusals[1:]:
            refused = pc.or_kleene(refused, more)
        refused = pc.fill_null(refused, False)
        urls = pc.fill_null(raw.column("recording_url"), "")
        table = pa.table(
            {
                "n": pa.array(positions, pa.uint32()),
                "tenant_id": raw.column("tenant_id"),
                "id": raw.column("id"),
                "sip_call_id": raw.column("sip_call_id"),
                "cause": raw.column("cause"),
                "duration": durations,
                "billsec": billsecs,
                "direction": pa.array([DIRECTION_CODE[x["direction"].lower()] for x in e], pa.uint8()),
                "recording_url": urls,
                "recording_file": _recording_files(urls),
                "extension": pc.fill_null(raw.column("extension"), ""),
                "from_number": raw.column("from_number"),
                "to_number": raw.column("to_number"),
                "receive_dest": pc.fill_null(raw.column("receive_dest"), ""),
                "time_started": started.cast(TIME, safe=False),
                "time_answered": answered.cast(TIME, safe=False),
                "time_ended": ended.cast(TIME, safe=False),
                "status": [x["status"].strip().upper() for x in e],
                "emitted_at": emitted.cast(TIME, safe=False),
            },
            schema=_WITH_POSITION,
        )
        if not pc.any(refused).as_py():
            return table, []
        gone = cast(list[int], table.column("n").filter(refused).to_pylist())
        return table.filter(pc.invert(refused)), gone

    def _naive_rule(self, tenants: pa.ChunkedArray) -> tuple[Any, Any, Any]:
        """Each row's (offset, since, until) of ``NaiveTimes``: its tenant's, or the
        default's (as scalars when no listed tenant is in the batch)."""
        default = self._naive
        scalars = tuple(pa.scalar(getattr(default, name), pa.int64()) for name in _RULE_PARTS)
        if not len(self._tenants):
            return scalars
        at = pc.index_in(tenants, value_set=self._tenants)
        if at.null_count == len(at):
            return scalars
        offset, since, until = (pc.fill_null(part.take(at), d) for part, d in zip(self._rules, scalars, strict=True))
        return offset, since, until

    def _utc(self, column: pa.ChunkedArray, rule: tuple[Any, Any, Any], refusals: list[pa.Array]) -> pa.ChunkedArray:
        """A column of timestamp strings as UTC microseconds; appends to ``refusals`` the
        rows it cannot convert as the model does."""
        offset, since, until = rule
        with_offset = pc.match_substring_regex(column, _OFFSET_SUFFIX)
        aware = _parsed(pc.if_else(with_offset, column, _NO_STRING), _US, refusals)
        naive = _parsed(pc.if_else(with_offset, _NO_STRING, column), _NAIVE_US, refusals).cast(pa.int64())
        refusals.append(pc.or_(pc.less(naive, since), pc.greater_equal(naive, until)))
        local = pc.subtract(naive, offset).cast(_US)
        return pc.if_else(with_offset, aware, local)


def _recording_files(column: pa.ChunkedArray) -> pa.Array:
    """``processor.recording_file`` of each URL: the plain ones in Arrow (the same rule:
    the path after the host, trailing slashes dropped, its last segment), the rest in Python."""
    urls = column.combine_chunks()
    plain = pc.or_(pc.equal(urls, ""), pc.match_substring_regex(urls, PLAIN_URL))
    path = pc.replace_substring_regex(urls, _SCHEME_AND_HOST, "")
    files = pc.replace_substring_regex(pc.replace_substring_regex(path, "/+$", ""), "^.*/", "")
    if pc.all(plain).as_py():
        return files
    others = pa.array([recording_file(url) for url in urls.filter(pc.invert(plain)).to_pylist()], pa.string())
    return pc.replace_with_mask(files, pc.invert(plain), others)


def _parsed(strings: pa.ChunkedArray, to: pa.DataType, refusals: list[pa.Array]) -> pa.ChunkedArray:
    """``strings`` cast to timestamps; one that does not parse (a date the shape allows but
    the calendar does not) becomes null, and its row is refused."""
    try:
        return strings.cast(to)
    except pa.ArrowInvalid:
        values: list[Any] = []
        for text in strings.to_pylist():
            try:
                values.append(pa.scalar(text, pa.string()).cast(to).as_py())
            except pa.ArrowInvalid:
                values.append(_UNPARSED)
        refusals.append(pa.array([v is _UNPARSED for v in values], pa.bool_()))
        return pa.chunked_array([pa.array([None if v is _UNPARSED else v for v in values], to)])


_UNPARSED = object()
_TIMES = ("emitted_at", "time_started", "time_answered", "time_ended")
_RULE_PARTS = ("offset_us", "since_us", "until_us")
_END_US = (STORE_END - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
_SCHEME_AND_HOST = rf"^{URL_SCHEME}[^/]*"
# The validated dicts' fields as Arrow reads them: the table's columns, times as the
# strings they are parsed from; direction, status and recording_file are derived.
_RAW = pa.schema(
    [
        (f.name, pa.string() if f.type == TIME else f.type)
        for f in SCHEMA
        if f.name not in ("direction", "status", "recording_file")
    ]
)
_NO_STRING = pa.scalar(None, pa.string())
_WITH_POSITION = pa.schema([pa.field("n", pa.uint32()), *SCHEMA])
