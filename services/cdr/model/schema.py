"""The call-ended event's JSON Schema, generated from the model (checked in under schemas/)."""

from __future__ import annotations

from typing import Any

from cdr.model.event import CallEnded

EVENT_SCHEMA_FILE = "call-ended.v1.schema.json"


def event_json_schema() -> dict[str, Any]:
    schema = CallEnded.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "A call-ended event, one per finished call, published by the PBX to Kafka. "
        "Rules beyond the schema: billsec <= duration; time_started <= time_answered <= time_ended; every time"
        " in the years 1900-2299 after conversion to UTC; time_ended - time_started at most the longest call"
        " (CDR_MAX_CALL_SECONDS, a day by default) and at most duration + 2 s; duration at most the longest call."
        " Naive timestamps are read in the tenant's timezone (the tenant directory's, else the PBX timezone)."
        " Extra fields are ignored."
    )
    return schema
