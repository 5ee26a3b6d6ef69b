"""Message -> event -> columns. Pure: no I/O, testable alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyarrow as pa
from pydantic import ValidationError

from cdr.metrics import DeadLetterKind
from cdr.model.event import MAX_CALL_S, CallEnded
from cdr.model.record import Direction

TIME = pa.timestamp("ms", tz="UTC")
DIRECTION_CODE = {d.name.lower(): int(d) for d in Direction}

SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("id", pa.string()),
        ("sip_call_id", pa.string()),
        ("cause", pa.string()),
        ("duration", pa.uint32()),
        ("billsec", pa.uint32()),
        ("direction", pa.uint8()),
        ("recording_url", pa.string()),
        ("recording_file", pa.string()),
        ("extension", pa.string()),
        ("from_number", pa.string()),
        ("to_number", pa.string()),
        ("receive_dest", pa.string()),
        ("time_started", TIME),
        ("time_answered", TIME),
        ("time_ended", TIME),
        ("status", pa.string()),
        ("emitted_at", TIME),
    ]
)


@dataclass(frozen=True)
class Invalid:
    """Why a message cannot be stored; ``kind`` is a short metric label."""

    kind: DeadLetterKind
    reason: str


def precheck(value: bytes | None, max_bytes: int) -> Invalid | None:
    """Why a message is refused before it is parsed at all, if it is."""
    if value is None:
        return Invalid("empty", "message has no value (tombstone)")
    if len(value) > max_bytes:
        return Invalid("too_large", f"message is {len(value)} bytes, over the {max_bytes}-byte limit")
    return None


def validate(
    value: bytes,
    zone: ZoneInfo,
    latest_emitted_at: datetime | None = None,
    *,
    tenant_zones: Mapping[str, ZoneInfo] | None = None,
    max_call_s: int = MAX_CALL_S,
) -> CallEnded | Invalid:
    """The pydantic model's verdict on one message that passed ``precheck``: naive times
    read in the tenant's zone of ``tenant_zones``, else ``zone``; ``latest_emitted_at``: a
    later ``emitted_at`` is refused; ``max_call_s``: the longest call."""
    context = {
        "timezone": zone,
        "tenant_zones": tenant_zones or {},
        "latest_emitted_at": latest_emitted_at,
        "max_call_s": max_call_s,
    }
    try:
        return CallEnded.model_validate_json(value, context=context)
    except ValidationError as exc:
        return Invalid(_kind(exc), describe(exc))


def _kind(exc: ValidationError) -> DeadLetterKind:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return "not_json"
    if not first["loc"] and first["type"] in ("model_type", "model_attributes_type"):
        return "not_object"
    if first["loc"] == ("schema_version",):
        return "unknown_schema_version"
    return "invalid_event"


def describe(exc: ValidationError) -> str:
    """One line naming each field at fault, e.g. ``duration: Input should be ...``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "event"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)[:2000]


# A URL urlsplit would take apart without surprises: a scheme, "://", then printable
# ASCII with no query, fragment, IPv6 bracket, space or control character (urlsplit
# drops tabs and newlines and strips leading controls). Its path starts at the first "/"
# after the host; taking it directly is ~30x cheaper than urlsplit. The class is "!" to
# "~" less "#", "?", "[" and "]"; the compiled validator (rust/cdr-validate) takes the
# same shape and leaves every other URL's file name to this function.
_PLAIN_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.\-]*://[!-"$->@-Z\\^-~]*$')


def recording_file(url: str | None) -> str:
    """The recording's file name: the last path segment of its URL (no query string)."""
    if not url:
        return ""
    if _PLAIN_URL.fullmatch(url):
        after_scheme = url[url.index("://") + 3 :]
        slash = after_scheme.find("/")
        return after_scheme[slash:].rstrip("/").rsplit("/", 1)[-1] if slash >= 0 else ""
    path = url.split("?", 1)[0]
    if "://" in url:
        # An unclosed IPv6 bracket makes urlsplit raise; the event is still valid.
        with suppress(ValueError):
            path = urlsplit(url).path
    return path.rstrip("/").rsplit("/", 1)[-1]


def to_table(events: list[CallEnded], positions: list[int] | None = None) -> pa.Table:
    """The events as one Arrow table in the shape of the ``cdr`` table.

    Column by column (a comprehension per column beats appending field by field), and
    Arrow converts the aware datetimes to UTC milliseconds itself. With ``positions``,
    a first column ``n`` holds them (the rows' places in their batch)."""
    e = events
    table = pa.table(
        {
            "tenant_id": [x.tenant_id for x in e],
            "id": [str(x.id) for x in e],
            "sip_call_id": [x.sip_call_id for x in e],
            "cause": [x.cause for x in e],
            "duration": [x.duration for x in e],
            "billsec": [x.billsec for x in e],
            "direction": [DIRECTION_CODE[x.direction] for x in e],
            "recording_url": [x.recording_url or "" for x in e],
            "recording_file": [recording_file(x.recording_url) for x in e],
            "extension": [x.extension or "" for x in e],
            "from_number": [x.from_number for x in e],
            "to_number": [x.to_number for x in e],
            "receive_dest": [x.receive_dest or "" for x in e],
            "time_started": pa.array([x.time_started for x in e], TIME),
            "time_answered": pa.array([x.time_answered for x in e], TIME),
            "time_ended": pa.array([x.time_ended for x in e], TIME),
            "status": [x.status for x in e],
            "emitted_at": pa.array([x.emitted_at for x in e], TIME),
        },
        schema=SCHEMA,
    )
    if positions is None:
        return table
    return table.add_column(0, pa.field("n", pa.uint32()), [pa.array(positions, pa.uint32())])
