"""The call-ended event a PBX publishes to Kafka (spec/EVENTS.md), as a pydantic model.

Naive ``YYYY-MM-DD HH:MM:SS`` timestamps are read in the PBX timezone, passed as the
validation context ``{"timezone": ZoneInfo}``; without a context UTC is assumed.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
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
            "RFC 3339 with an offset, integer Unix seconds, or naive 'YYYY-MM-DD HH:MM:SS' in the PBX timezone."
        )
    ),
]


def _zone(info: ValidationInfo) -> tzinfo:
    context = info.context
    if isinstance(context, dict):
        zone = context.get("timezone")
        if isinstance(zone, tzinfo):
            return zone
    return UTC


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
    duration: Seconds = Field(description="Whole call, in seconds.")
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
    time_ended: Timestamp = Field(description="Hang-up time; not before time_started.")
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
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=_zone(info))
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> CallEnded:
        latest = info.context.get("latest_emitted_at") if isinstance(info.context, dict) else None
        if latest is not None and self.emitted_at > latest:
            # A version from the future would win over every later correction of the call.
            raise ValueError(f"emitted_at is later than {latest.isoformat()} (now + the allowed clock skew)")
        if self.billsec > self.duration:
            raise ValueError(f"billsec ({self.billsec}) exceeds duration ({self.duration})")
        if self.time_ended < self.time_started:
            raise ValueError("time_ended is before time_started")
        answered = self.time_answered
        if answered is not None and not (self.time_started <= answered <= self.time_ended):
            raise ValueError("time_answered is not between time_started and time_ended")
        return self
