"""Query string -> validated filters and paging. Pure: no I/O.

Each parameter is defined once, in ``list_params``: its name, JSON Schema (type,
bounds, pattern), description and parser. The request parser below and the OpenAPI
document (``cdr.api.openapi``) both read that table, so they cannot disagree. Every
error names the parameter at fault (spec/API.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import phonenumbers

from cdr.api.errors import InvalidParameter, InvalidScrollId
from cdr.model.record import Direction
from cdr.phones import canonical
from cdr.store.feed import FeedFilters
from cdr.store.queries import GROUP_BY
from cdr.store.queries import SearchFilters as Filters

FILTER_PARAMS: tuple[str, ...] = (
    "start_date",
    "end_date",
    "start_date_ended",
    "end_date_ended",
    "duration",
    "min_duration",
    "max_duration",
    "cause",
    "extension",
    "recordingfile",
    "status",
    "phone",
    "phone_prefix",
    "direction",
)

# What ClickHouse's DateTime64 holds; a bound outside it cannot be compared with a stored time.
STORE_MIN = datetime(1900, 1, 1, tzinfo=UTC)
STORE_MAX = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)

_UINT32_MAX = 4_294_967_295
_MAX_TEXT = 256
_MAX_SCROLL_ID = 4096

# ECMA-262 patterns (the OpenAPI document's dialect) that mean the same in Python's
# `re.fullmatch`: ASCII digit classes only, no `\d`, no `$` (which lets a trailing
# newline through in Python).
_YEAR = "(19[0-9]{2}|2[0-2][0-9]{2})"
_MONTH_DAY = "(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_CLOCK = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_OFFSET = "([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
DATE_PATTERN = f"^{_YEAR}-{_MONTH_DAY}([Tt ]{_CLOCK}(\\.[0-9]{{1,9}})?{_OFFSET}?)?$"
PHONE_PATTERN = "^\\+?[0-9]{1,20}$"
SCROLL_ID_PATTERN = "^[A-Za-z0-9_-]+$"
TEXT_PATTERN = "^[^\\u0000]+$"


def _caseless(*words: str) -> str:
    """An anchored pattern matching any of the words in any letter case."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in w) for w in words)
    return "^(" + "|".join(spelled) + ")$"


@functools.cache
def _full(pattern: str) -> re.Pattern[str]:
    # The same text as the schema's pattern, matched against the whole value, ASCII only.
    return re.compile(pattern.removeprefix("^").removesuffix("$"), re.ASCII)


@dataclass(frozen=True)
class Context:
    """What parsing a value depends on beyond the value itself."""

    zone: ZoneInfo
    region: str


Parser = Callable[[str, Context], Any]


@dataclass(frozen=True)
class Param:
    """One query parameter: the single definition both the parser and the OpenAPI document read."""

    name: str
    schema: dict[str, Any]
    description: str
    parse: Parser
    error: type[InvalidParameter | InvalidScrollId] = InvalidParameter

    def read(self, raw: str, context: Context) -> Any:
        pattern = self.schema.get("pattern")
        too_long = len(raw) > self.schema.get("maxLength", len(raw))
        if too_long or (pattern is not None and not _full(pattern).fullmatch(raw)):
            raise self.error(f"{self.name} {self.schema['x-rule']}", param=self.name)
        try:
            return self.parse(raw, context)
        except ValueError as exc:
            raise self.error(f"{self.name} {exc}", param=self.name) from None


@dataclass(frozen=True)
class Limits:
    default_limit: int
    max_limit: int
    max_offset: int


# --- parsers: raise ValueError("<what is wrong>"), the caller prefixes the name ------------


def _moment(text: str, context: Context) -> datetime:
    """A date, a naive date-time (tenant's timezone) or RFC 3339; as an aware datetime."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time(0), tzinfo=context.zone)
        else:
            parsed = datetime.fromisoformat(text[:10] + "T" + text[11:].upper())
            moment = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=context.zone)
        utc = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"is not a real calendar date and time: {text!r}") from None
    if not STORE_MIN <= utc <= STORE_MAX:
        raise ValueError("is outside the range the store holds (1900-01-01 to 2299-12-31 UTC)")
    return moment


def _integer(low: int, high: int) -> Parser:
    def parse(text: str, context: Context) -> int:
        number = int(text)  # the pattern admits ASCII digits only
        if not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number

    return parse


def _text(text: str, context: Context) -> str:
    return text


def _status(text: str, context: Context) -> str:
    return text.upper()


def _direction(text: str, context: Context) -> int:
    return int(Direction.parse(text))


def _lower(text: str, context: Context) -> str:
    return text.lower()


def _flag(text: str, context: Context) -> bool:
    return text.lower() in ("true", "1", "yes")


def _phone(text: str, context: Context) -> tuple[str, ...]:
    return phone_variants(text, context.region)


def _phone_prefix(text: str, context: Context) -> tuple[str, ...]:
    return prefix_variants(text, context.region)


def prefix_variants(prefix: str, region: str) -> tuple[str, ...]:
    """The forms the start of one number may be logged in, like ``phone_variants``: a
    national prefix (trunk 0) and the international ones with the region's country code
    match each other; any other prefix (a hotline's 1900, a bare 84...) only itself."""
    code = str(phonenumbers.country_code_for_region(region))
    digits = prefix.removeprefix("+")
    if prefix.startswith("+") and digits.startswith(code) and len(digits) > len(code):
        national = digits[len(code) :]
    elif prefix.startswith("0") and len(prefix) > 1:
        national = prefix[1:]
    else:
        return (prefix,)
    return tuple(sorted({"0" + national, code + national, "+" + code + national}))


def phone_variants(number: str, region: str) -> tuple[str, ...]:
    """The forms one number is searched for: its canonical form, as the ingestor stores
    it (cdr.phones), and the raw forms a call stored before that may hold (as given,
    national, international)."""
    forms = {number, canonical(number, region.upper())}
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return tuple(sorted(forms))
    if phonenumbers.is_possible_number(parsed):
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        forms.update({"".join(c for c in national if c.isascii() and c.isdigit()), e164, e164[1:]})
    return tuple(sorted(f for f in forms if f))


# --- the table ----------------------------------------------------------------------------


def _whole(low: int, high: int) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": low,
        "maximum": high,
        "pattern": "^[0-9]{1,12}$",
        "x-rule": f"must be a whole number from {low} to {high}",
    }


def _string(pattern: str, rule: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern, "x-rule": rule, **extra}


_DATE_SCHEMA = _string(
    DATE_PATTERN,
    "must be YYYY-MM-DD, YYYY-MM-DD HH:MM:SS (tenant's timezone) or RFC 3339 with an offset, years 1900-2299",
    examples=["2021-02-18", "2021-02-18 17:20:58", "2021-02-18T17:20:58+07:00"],
)
_FLAG_SCHEMA = _string(_caseless("true", "false", "1", "0", "yes", "no"), "must be true or false")
_TEXT_SCHEMA = _string(TEXT_PATTERN, f"must be 1 to {_MAX_TEXT} characters, no NUL", maxLength=_MAX_TEXT)
_DATE_RULE = (
    " YYYY-MM-DD (= 00:00:00) or YYYY-MM-DD HH:MM:SS in the tenant's timezone, or RFC 3339 with an offset;"
    " between 1900-01-01 and 2299-12-31 UTC."
)


def list_params(limits: Limits) -> tuple[Param, ...]:
    """Every query parameter of GET /v1/cdr."""
    deepest_page = limits.max_offset + 1
    return (
        Param("start_date", _DATE_SCHEMA, "Calls started at or after this time." + _DATE_RULE, _moment),
        Param(
            "end_date",
            _DATE_SCHEMA,
            "Calls started at or before this time; not before start_date." + _DATE_RULE,
            _moment,
        ),
        Param("start_date_ended", _DATE_SCHEMA, "Calls ended at or after this time." + _DATE_RULE, _moment),
        Param(
            "end_date_ended",
            _DATE_SCHEMA,
            "Calls ended at or before this time; not before start_date_ended." + _DATE_RULE,
            _moment,
        ),
        Param("duration", _whole(0, _UINT32_MAX), "Duration equals this many seconds.", _integer(0, _UINT32_MAX)),
        Param(
            "min_duration",
            _whole(0, _UINT32_MAX),
            "Duration strictly greater than this many seconds.",
            _integer(0, _UINT32_MAX),
        ),
        Param(
            "max_duration",
            _whole(0, _UINT32_MAX),
            "Duration at most this many seconds.",
            _integer(0, _UINT32_MAX),
        ),
        Param(
            "cause",
            _TEXT_SCHEMA,
            "Hang-up cause, exact and case-sensitive as the PBX logs it, e.g. NORMAL_CLEARING, USER_BUSY.",
            _text,
        ),
        Param("extension", _TEXT_SCHEMA, "Extension that made or received the call (exact).", _text),
        Param("recordingfile", _TEXT_SCHEMA, "Recording file name, e.g. abcd.mp3 (exact).", _text),
        Param("status", _TEXT_SCHEMA, "Call status, case-insensitive, e.g. ANSWERED, NO ANSWER.", _status),
        Param(
            "phone",
            _string(PHONE_PATTERN, "must be 1 to 20 digits (0-9) with an optional leading +"),
            "From or to this number: digits only, optional leading +. National and international forms of "
            "one number match each other (0899888999, 84899888999, +84899888999).",
            _phone,
        ),
        Param(
            "phone_prefix",
            _string(PHONE_PATTERN, "must be 1 to 20 digits (0-9) with an optional leading +"),
            "From or to a number starting with these digits. A national prefix (0...) and the same prefix with "
            "the country code (84..., +84...) match each other; other prefixes (e.g. 1900) only themselves.",
            _phone_prefix,
        ),
        Param(
            "direction",
            _string(
                _caseless("inbound", "outbound", "local", "1", "2", "3"),
                "must be inbound, outbound, local or 1, 2, 3",
            ),
            "Call direction, case-insensitive: inbound, outbound, local or their codes 1, 2, 3.",
            _direction,
        ),
        Param(
            "limit",
            _whole(1, limits.max_limit),
            f"Records per response (default {limits.default_limit}).",
            _integer(1, limits.max_limit),
        ),
        Param(
            "page",
            _whole(1, deepest_page),
            f"Page number (pagination mode). (page - 1) x limit may not exceed {limits.max_offset}: "
            "read deeper with scroll, which costs the same at any depth.",
            _integer(1, deepest_page),
        ),
        Param(
            "offset",
            _whole(0, limits.max_offset),
            f"Start position; replaces page (pagination mode). At most {limits.max_offset}: read deeper with scroll.",
            _integer(0, limits.max_offset),
        ),
        Param(
            "scroll_id",
            _string(SCROLL_ID_PATTERN, "is malformed", maxLength=_MAX_SCROLL_ID),
            "Cursor from the previous scroll response, unchanged. Filters given beside it must be the ones "
            "it was issued for.",
            _text,
            InvalidScrollId,
        ),
        Param(
            "scroll",
            _FLAG_SCHEMA,
            "true forces scroll mode even with limit (to choose the first batch size).",
            _flag,
        ),
        Param(
            "order",
            _string(_caseless("asc", "desc"), "must be asc or desc"),
            "By time_started then id (default asc), case-insensitive.",
            _lower,
        ),
    )


def export_params(limits: Limits) -> tuple[Param, ...]:
    """Every query parameter of GET /v1/cdr/export: the list's filters and order, the format."""
    kept = tuple(p for p in list_params(limits) if p.name in FILTER_PARAMS or p.name == "order")
    return (
        *kept,
        Param(
            "format",
            _string(_caseless("csv", "ndjson"), "must be csv or ndjson"),
            "csv (a header row, then one line per CDR; default) or ndjson (one JSON object per line).",
            _lower,
        ),
        Param(
            "bom",
            _FLAG_SCHEMA,
            "true starts a CSV file with a UTF-8 byte order mark, so spreadsheet software shows Vietnamese "
            "text correctly.",
            _flag,
        ),
    )


def stats_params(limits: Limits) -> tuple[Param, ...]:
    """Every query parameter of GET /v1/cdr/stats: the list's filters and group_by."""
    kept = tuple(p for p in list_params(limits) if p.name in FILTER_PARAMS)
    return (
        *kept,
        Param(
            "group_by",
            _string(_caseless(*GROUP_BY), "must be one of " + ", ".join(GROUP_BY)),
            "Group by hour, day or month of time_started (in the tenant's timezone), or by extension, status,"
            " direction or cause. Default day.",
            _lower,
        ),
    )


@dataclass(frozen=True)
class StatsRequest:
    filters: Filters
    group_by: str


def parse_stats_request(query: MultiQuery, params: tuple[Param, ...], context: Context) -> StatsRequest:
    given = read_query(query, params, context)
    return StatsRequest(filters=_filters(given), group_by=given.get("group_by", "day"))


@dataclass(frozen=True)
class ExportRequest:
    filters: Filters
    order: Literal["asc", "desc"]
    format: Literal["csv", "ndjson"]
    bom: bool


def parse_export_request(query: MultiQuery, params: tuple[Param, ...], context: Context) -> ExportRequest:
    given = read_query(query, params, context)
    return ExportRequest(
        filters=_filters(given),
        order="desc" if given.get("order") == "desc" else "asc",
        format="ndjson" if given.get("format") == "ndjson" else "csv",
        bom=given.get("bom") is True,
    )


class MultiQuery(Protocol):
    def getlist(self, key: str) -> list[str]: ...


def read_query(query: MultiQuery, params: tuple[Param, ...], context: Context) -> dict[str, Any]:
    """The given parameters, parsed. A repeated or empty known parameter is a 400:
    "last one wins" would silently drop a filter the caller meant."""
    values: dict[str, Any] = {}
    for param in params:
        given = query.getlist(param.name)
        if not given:
            continue
        if len(given) > 1:
            raise InvalidParameter(f"{param.name} is given {len(given)} times; give it once", param=param.name)
        if given[0] == "":
            raise InvalidParameter(f"{param.name} is empty; leave it out to not use it", param=param.name)
        values[param.name] = param.read(given[0], context)
    return values


@dataclass(frozen=True)
class ListRequest:
    """What GET /v1/cdr asked for, after the mode rules."""

    mode: Literal["page", "scroll"]
    filters: Filters
    limit: int
    order: Literal["asc", "desc"]
    order_given: bool = False
    offset: int = 0
    page: int = 1
    scroll_id: str | None = None
    limit_given: bool = False
    given_filters: frozenset[str] = field(default_factory=frozenset)


def parse_list_request(query: MultiQuery, params: tuple[Param, ...], context: Context, limits: Limits) -> ListRequest:
    given = read_query(query, params, context)
    filters = _filters(given)
    given_filters = frozenset(name for name in FILTER_PARAMS if name in given)
    limit: int | None = given.get("limit")
    page: int | None = given.get("page")
    offset: int | None = given.get("offset")
    order: Literal["asc", "desc"] = "desc" if given.get("order") == "desc" else "asc"
    size = limit or limits.default_limit
    # A first scroll batch unless the parameters say otherwise.
    first_batch = ListRequest(
        "scroll",
        filters,
        size,
        order,
        order_given="order" in given,
        limit_given=limit is not None,
        given_filters=given_filters,
    )
    if "scroll_id" in given:
        return replace(first_batch, scroll_id=given["scroll_id"])
    if given.get("scroll") is not True and (page is not None or limit is not None or offset is not None):
        start = offset if offset is not None else ((page or 1) - 1) * size
        if start > limits.max_offset:
            raise InvalidParameter(
                f"page {page} of {size} starts at record {start}, beyond the deepest pagination allows "
                f"({limits.max_offset}); read further with scroll (leave out page, offset and limit, or add "
                "scroll=true), which costs the same at any depth",
                param="page",
            )
        return replace(first_batch, mode="page", offset=start, page=start // size + 1)
    return first_batch


def _filters(given: dict[str, Any]) -> Filters:
    start, end = given.get("start_date"), given.get("end_date")
    start_ended, end_ended = given.get("start_date_ended"), given.get("end_date_ended")
    if start and end and end < start:
        raise InvalidParameter("end_date is before start_date", param="end_date")
    if start_ended and end_ended and end_ended < start_ended:
        raise InvalidParameter("end_date_ended is before start_date_ended", param="end_date_ended")
    shortest, longest = given.get("min_duration"), given.get("max_duration")
    if shortest is not None and longest is not None and longest <= shortest:
        raise InvalidParameter("max_duration must be above min_duration (min_duration excludes)", param="max_duration")
    return Filters(
        start=start,
        end=end,
        start_ended=start_ended,
        end_ended=end_ended,
        duration=given.get("duration"),
        min_duration=given.get("min_duration"),
        max_duration=given.get("max_duration"),
        cause=given.get("cause"),
        extension=given.get("extension"),
        recordingfile=given.get("recordingfile"),
        status=given.get("status"),
        phones=given.get("phone"),
        phone_prefixes=given.get("phone_prefix"),
        direction=given.get("direction"),
    )


FEED_FILTER_PARAMS: tuple[str, ...] = ("direction", "status", "extension", "cause")
MAX_FEED_WAIT_S = 30
MAX_FEED_LIMIT = 1000
_FEED_DEFAULT_LIMIT = 100


def feed_params(limits: Limits, *, stream: bool = False) -> tuple[Param, ...]:
    """Every query parameter of GET /v1/cdr/changes (``stream``: of /v1/cdr/changes/stream,
    which has no limit and no wait: it sends each change as it comes)."""
    filters = tuple(p for p in list_params(limits) if p.name in FEED_FILTER_PARAMS)
    paging = (
        Param(
            "limit",
            _whole(1, MAX_FEED_LIMIT),
            f"Changes per response, at most (default {_FEED_DEFAULT_LIMIT}). A response may hold fewer, none"
            " included, while more follow: continue with its cursor.",
            _integer(1, MAX_FEED_LIMIT),
        ),
        Param(
            "wait",
            _whole(0, MAX_FEED_WAIT_S),
            f"Long poll: with no change after the cursor yet, wait up to this many seconds (0-{MAX_FEED_WAIT_S},"
            " default 0) and answer as soon as one arrives; at the end of the wait, an empty page and the cursor.",
            _integer(0, MAX_FEED_WAIT_S),
        ),
    )
    return (
        Param(
            "cursor",
            _string(SCROLL_ID_PATTERN, "is malformed", maxLength=_MAX_SCROLL_ID),
            "The cursor of the previous response (or an event id of the stream), unchanged: where to continue."
            " Valid for the feed's retention. Filters given beside it must be the ones it was issued for.",
            _text,
        ),
        Param(
            "since",
            _DATE_SCHEMA,
            "Without a cursor: start at the first change stored at or after this time (within the feed's"
            " retention). Without cursor and since: start now." + _DATE_RULE,
            _moment,
        ),
        *filters,
        *(() if stream else paging),
    )


@dataclass(frozen=True)
class FeedRequest:
    """What GET /v1/cdr/changes(/stream) asked for."""

    filters: FeedFilters
    given_filters: frozenset[str]
    cursor: str | None
    since: datetime | None
    limit: int
    wait_s: int


def parse_feed_request(query: MultiQuery, params: tuple[Param, ...], context: Context) -> FeedRequest:
    given = read_query(query, params, context)
    if "cursor" in given and "since" in given:
        raise InvalidParameter("since starts a feed without a cursor; give one or the other", param="since")
    return FeedRequest(
        filters=FeedFilters(
            direction=given.get("direction"),
            status=given.get("status"),
            extension=given.get("extension"),
            cause=given.get("cause"),
        ),
        given_filters=frozenset(name for name in FEED_FILTER_PARAMS if name in given),
        cursor=given.get("cursor"),
        since=given.get("since"),
        limit=given.get("limit", _FEED_DEFAULT_LIMIT),
        wait_s=given.get("wait", 0),
    )
