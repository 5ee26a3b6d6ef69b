"""The call-ended event a PBX publishes to Kafka (spec/EVENTS.md), as a pydantic model.

Naive ``YYYY-MM-DD HH:MM:SS`` timestamps are read in the tenant's timezone: the
validation context's ``"tenant_zones"`` (tenant id -> tzinfo), else its ``"timezone"``
(the PBX timezone); without a context UTC is assumed. ``"max_call_s"`` in the context
bounds a call's length (default ``MAX_CALL_S``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

Seconds = Annotated[StrictInt, Field(ge=0, le=4_294_967_295)]
# A tenant is a customer's domain: ASCII letters, digits, dot, dash, underscore (IDN domains
# in their xn-- form). No control, space or invisible characters that would make two
# tenants look the same in a log or a token file.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|z|[+-][0-9]{2}:[0-9]{2})?$"
)
Timestamp = Annotated[
    datetime,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": TIMESTAMP_PATTERN},
                {"type": "integer", "minimum": 0},
            ]
        }
    ),
    Field(
        description=(
            "RFC 3339 with an offset, integer Unix seconds, or naive 'YYYY-MM-DD HH:MM:SS' in the tenant's timezone"
            " (of the tenant directory; the PBX timezone for a tenant it does not list). Years 1900-2299 in UTC."
        )
    ),
]


# Every time lies in what DateTime64(3) holds on every supported ClickHouse server (an
# older one, 25.8 LTS, clamps what is outside) and what the API's date filters take: a
# call stored at another time could be listed but never selected by date.
STORE_MIN = datetime(1900, 1, 1, tzinfo=UTC)
STORE_END = datetime(2300, 1, 1, tzinfo=UTC)
# A call's span (time_ended - time_started) may not exceed this, by default: a "call" of
# more than a day is a channel the PBX never hung up (or a clock jump), not a conversation.
MAX_CALL_S = 86_400
# How far duration may fall short of the span. FreeSWITCH's duration is end_epoch -
# start_epoch of whole seconds, Asterisk's the start-to-end time truncated to a second;
# times carrying milliseconds (or whole seconds cut from finer ones) differ from either by
# under a second each way; 2 s leaves a second's margin for a bridge rounding its own way.
DURATION_TOLERANCE_S = 2


def _zone(info: ValidationInfo) -> tzinfo:
    context = info.context
    if isinstance(context, dict):
        zones = context.get("tenant_zones")
        if isinstance(zones, Mapping):
            # tenant_id is declared (so validated) before every time; absent when it is invalid.
            zone = zones.get(info.data.get("tenant_id"))
            if isinstance(zone, tzinfo):
                return zone
        zone = context.get("timezone")
        if isinstance(zone, tzinfo):
            return zone
    return UTC


def _seconds(span: timedelta) -> str:
    return str(span.total_seconds()).removesuffix(".0")


def _max_call_s(info: ValidationInfo) -> int:
    limit = info.context.get("max_call_s") if isinstance(info.context, dict) else None
    return limit if isinstance(limit, int) else MAX_CALL_S


class CallEnded(BaseModel):
    """One finished call, as reported by the PBX. Unknown extra fields are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        title="CallEnded",
        json_schema_extra={"$id": "https://cdr.example/schemas/call-ended.v1.json"},
    )

    event: Literal["call.ended"] = Field(description="Always 'call.ended'.")
    schema_version: Literal[1] = Field(description="Event schema version; an unknown version is dead-lettered.")
    tenant_id: StrictStr = Field(
        min_length=1,
        max_length=128,
        pattern=TENANT_PATTERN,
        description="The PBX customer / domain: ASCII letters, digits, '.', '-', '_'; starts with a letter or digit.",
    )
    emitted_at: Timestamp = Field(description="When the PBX emitted this event; the newest wins for one id.")
    id: UUID = Field(description="CDR id.")
    sip_call_id: StrictStr = Field(max_length=1024, description="Call-ID of the SIP dialog; may be empty.")
    cause: StrictStr = Field(max_length=128, description="Hang-up cause, e.g. NORMAL_CLEARING.")
    duration: Seconds = Field(
        description=(
            "Whole call, in seconds: not shorter than time_ended - time_started by more than 2 s, and not"
            " longer than the longest call stored (CDR_MAX_CALL_SECONDS, a day by default)."
        )
    )
    billsec: Seconds = Field(description="Talk time, in seconds; not more than duration.")
    direction: Literal["inbound", "outbound", "local"] = Field(description="Call direction.")
    recording_url: StrictStr | None = Field(None, max_length=4096, description="Recording of the call, if any.")
    extension: StrictStr | None = Field(None, max_length=128, description="Extension that made or received the call.")
    from_number: StrictStr = Field(max_length=128, description="Calling number, as the PBX saw it.")
    to_number: StrictStr = Field(max_length=128, description="Called number, as the PBX saw it.")
    receive_dest: StrictStr | None = Field(
        None, max_length=256, description="Ring group or queue that received the call."
    )
    time_started: Timestamp = Field(description="Call set-up time.")
    time_answered: Timestamp | None = Field(None, description="Answer time; null if unanswered.")
    time_ended: Timestamp = Field(
        description="Hang-up time; not before time_started, nor longer after it than a call may last."
    )
    status: StrictStr = Field(
        min_length=1,
        max_length=64,
        description="Call status, e.g. ANSWERED, BUSY, NO ANSWER, FAILED; stored upper case.",
    )

    @field_validator("direction", mode="before")
    @classmethod
    def _lower_direction(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("status", mode="after")
    @classmethod
    def _upper_status(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("emitted_at", "time_started", "time_answered", "time_ended", mode="after")
    @classmethod
    def _aware(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=_zone(info))
        if not STORE_MIN <= value < STORE_END:  # compared as instants: no UTC conversion to overflow
            raise ValueError(
                f"{value.isoformat()} is outside 1900-01-01 to 2299-12-31 UTC (what the store and the API's dates hold)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> CallEnded:
        latest = info.context.get("latest_emitted_at") if isinstance(info.context, dict) else None
        if latest is not None and self.emitted_at > latest:
            # A version from the future would win over every later correction of the call.
            raise ValueError(f"emitted_at is later than {latest.isoformat()} (now + the allowed clock skew)")
        if self.billsec > self.duration:
            raise ValueError(f"billsec ({self.billsec}) exceeds duration ({self.duration})")
        # In UTC: two times of one zone compare (and subtract) as wall-clock times, an hour
        # off across a daylight-saving change.
        started, ended = self.time_started.astimezone(UTC), self.time_ended.astimezone(UTC)
        if ended < started:
            raise ValueError("time_ended is before time_started")
        answered = self.time_answered
        if answered is not None and not (started <= answered.astimezone(UTC) <= ended):
            raise ValueError("time_answered is not between time_started and time_ended")
        limit = _max_call_s(info)
        span = ended - started
        if span > timedelta(seconds=limit):
            raise ValueError(
                f"time_ended is {_seconds(span)} s after time_started, longer than a call may last"
                f" ({limit} s, CDR_MAX_CALL_SECONDS)"
            )
        if self.duration > limit:
            raise ValueError(
                f"duration ({self.duration}) is longer than a call may last ({limit} s, CDR_MAX_CALL_SECONDS)"
            )
        # A duration above the span is taken: the contract's own examples have one (15 s over
        # an 11 s span), as a bridge counting from the first leg's creation would report.
        if span > timedelta(seconds=self.duration + DURATION_TOLERANCE_S):
            raise ValueError(
                f"duration ({self.duration}) is shorter than time_ended - time_started"
                f" ({_seconds(span)} s) by more than {DURATION_TOLERANCE_S} s"
            )
        return self
