"""Message -> event -> columns. Pure: no I/O, testable alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyarrow as pa
from pydantic import ValidationError

from cdr.model.event import CallEnded
from cdr.model.record import Direction

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_TIME = pa.timestamp("ms", tz="UTC")
_DIRECTION_CODE = {d.name.lower(): int(d) for d in Direction}

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
        ("time_started", _TIME),
        ("time_answered", _TIME),
        ("time_ended", _TIME),
        ("status", pa.string()),
        ("emitted_at", _TIME),
    ]
)


@dataclass(frozen=True)
class Invalid:
    """Why a message cannot be stored; ``kind`` is a short metric label."""

    kind: str
    reason: str


def parse_event(value: bytes | None, zone: ZoneInfo, max_bytes: int) -> CallEnded | Invalid:
    """Validate one Kafka message value as a call-ended event."""
    if value is None:
        return Invalid("empty", "message has no value (tombstone)")
    if len(value) > max_bytes:
        return Invalid("too_large", f"message is {len(value)} bytes, over the {max_bytes}-byte limit")
    try:
        return CallEnded.model_validate_json(value, context={"timezone": zone})
    except ValidationError as exc:
        return Invalid(_kind(exc), describe(exc))


def _kind(exc: ValidationError) -> str:
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


def recording_file(url: str | None) -> str:
    """The recording's file name: the last path segment of its URL (no query string)."""
    if not url:
        return ""
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    return path.rstrip("/").rsplit("/", 1)[-1]


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def to_table(events: list[CallEnded]) -> pa.Table:
    """The events as one Arrow table in the shape of the ``cdr`` table."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    c = columns
    for e in events:
        c["tenant_id"].append(e.tenant_id)
        c["id"].append(str(e.id))
        c["sip_call_id"].append(e.sip_call_id)
        c["cause"].append(e.cause)
        c["duration"].append(e.duration)
        c["billsec"].append(e.billsec)
        c["direction"].append(_DIRECTION_CODE[e.direction])
        c["recording_url"].append(e.recording_url or "")
        c["recording_file"].append(recording_file(e.recording_url))
        c["extension"].append(e.extension or "")
        c["from_number"].append(e.from_number)
        c["to_number"].append(e.to_number)
        c["receive_dest"].append(e.receive_dest or "")
        c["time_started"].append(_ms(e.time_started))
        c["time_answered"].append(None if e.time_answered is None else _ms(e.time_answered))
        c["time_ended"].append(_ms(e.time_ended))
        c["status"].append(e.status)
        c["emitted_at"].append(_ms(e.emitted_at))
    return pa.table(columns, schema=SCHEMA)
