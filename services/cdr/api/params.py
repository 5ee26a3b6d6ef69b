"""Query string -> validated filters and paging. Pure: no I/O.

Every error names the parameter at fault (spec/API.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

import phonenumbers

from cdr.api.errors import InvalidParameter
from cdr.model.record import Direction
from cdr.store.queries import SearchFilters as Filters

FILTER_PARAMS: tuple[str, ...] = (
    "start_date",
    "end_date",
    "start_date_ended",
    "end_date_ended",
    "duration",
    "min_duration",
    "extension",
    "recordingfile",
    "status",
    "phone",
    "direction",
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_PHONE = re.compile(r"^\+?\d{1,20}$")
_UINT32_MAX = 4_294_967_295
_MAX_TEXT = 256


@dataclass(frozen=True)
class ListRequest:
    """What GET /v1/cdr asked for, after the mode rules."""

    mode: Literal["page", "scroll"]
    filters: Filters
    limit: int
    order: Literal["asc", "desc"]
    offset: int = 0
    page: int = 1
    scroll_id: str | None = None
    limit_given: bool = False
    given_filters: frozenset[str] = field(default_factory=frozenset)


def parse_list_request(
    query: Mapping[str, str], *, zone: ZoneInfo, region: str, default_limit: int, max_limit: int
) -> ListRequest:
    filters = parse_filters(query, zone=zone, region=region)
    given = frozenset(name for name in FILTER_PARAMS if query.get(name, "") != "")
    limit = _int(query, "limit", 1, max_limit)
    page = _int(query, "page", 1, 10_000_000)
    offset = _int(query, "offset", 0, 1_000_000_000)
    order: Literal["asc", "desc"] = "desc" if _choice(query, "order", ("asc", "desc")) == "desc" else "asc"
    scroll = _bool(query, "scroll")
    scroll_id = query.get("scroll_id") or None

    if scroll_id is not None:
        return ListRequest(
            "scroll",
            filters,
            limit or default_limit,
            order,
            scroll_id=scroll_id,
            limit_given=limit is not None,
            given_filters=given,
        )
    if scroll is not True and (page is not None or limit is not None or offset is not None):
        size = limit or default_limit
        start = offset if offset is not None else ((page or 1) - 1) * size
        return ListRequest("page", filters, size, order, offset=start, page=start // size + 1, given_filters=given)
    return ListRequest("scroll", filters, limit or default_limit, order, given_filters=given)


def parse_filters(query: Mapping[str, str], *, zone: ZoneInfo, region: str) -> Filters:
    start = _moment(query, "start_date", zone)
    end = _moment(query, "end_date", zone)
    start_ended = _moment(query, "start_date_ended", zone)
    end_ended = _moment(query, "end_date_ended", zone)
    if start and end and end < start:
        raise InvalidParameter("end_date is before start_date", param="end_date")
    if start_ended and end_ended and end_ended < start_ended:
        raise InvalidParameter("end_date_ended is before start_date_ended", param="end_date_ended")
    direction_text = _text(query, "direction")
    direction = None
    if direction_text is not None:
        try:
            direction = int(Direction.parse(direction_text))
        except (KeyError, ValueError):
            raise InvalidParameter("direction must be inbound, outbound, local or 1, 2, 3", param="direction") from None
    status = _text(query, "status")
    phone = _text(query, "phone")
    return Filters(
        start=start,
        end=end,
        start_ended=start_ended,
        end_ended=end_ended,
        duration=_int(query, "duration", 0, _UINT32_MAX),
        min_duration=_int(query, "min_duration", 0, _UINT32_MAX),
        extension=_text(query, "extension"),
        recordingfile=_text(query, "recordingfile"),
        status=status.upper() if status is not None else None,
        phones=phone_variants(phone, region) if phone is not None else None,
        direction=direction,
    )


def phone_variants(raw: str, region: str) -> tuple[str, ...]:
    """The forms one number may be logged in: as given, national, international."""
    compact = raw.replace(" ", "").replace("-", "").replace(".", "")
    if not _PHONE.match(compact):
        raise InvalidParameter("phone must be digits with an optional leading +", param="phone")
    forms = {compact}
    try:
        number = phonenumbers.parse(compact, region)
    except phonenumbers.NumberParseException:
        return tuple(sorted(forms))
    national = re.sub(r"\D", "", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if phonenumbers.is_possible_number(number):
        forms.update({national, e164, e164.lstrip("+")})
    return tuple(sorted(f for f in forms if f))


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if len(value) > _MAX_TEXT:
        raise InvalidParameter(f"{name} is longer than {_MAX_TEXT} characters", param=name)
    if "\x00" in value:
        raise InvalidParameter(f"{name} contains a NUL character", param=name)
    return value


def _int(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InvalidParameter(f"{name} must be a whole number from {low} to {high}", param=name)
    number = int(text)
    if not low <= number <= high:
        raise InvalidParameter(f"{name} must be a whole number from {low} to {high}", param=name)
    return number


def _choice(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    lowered = value.lower()
    if lowered not in choices:
        raise InvalidParameter(f"{name} must be one of {', '.join(choices)}", param=name)
    return lowered


def _bool(query: Mapping[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidParameter(f"{name} must be true or false", param=name)


def _moment(query: Mapping[str, str], name: str, zone: ZoneInfo) -> datetime | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        if _DATE.match(text):
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=zone)
        if _DATETIME.match(text):
            return datetime.fromisoformat(text.replace("T", " ")).replace(tzinfo=zone)
        if _RFC3339.match(text):
            parsed = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
            if parsed.tzinfo is not None:
                return parsed
    except ValueError:
        pass
    raise InvalidParameter(f"{name} must be YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or RFC 3339 with an offset", param=name)
