"""The checked-in contracts (schemas/) match the code, and say what the code does."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import orjson
import pytest

from cdr.cli import schema_files
from cdr.model.event import CallEnded
from cdr.settings import load_settings
from cdr.simulate import make_event

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", ["call-ended.v1.schema.json", "openapi.json", "asyncapi.json"])
def test_checked_in_file_matches_code(name: str) -> None:
    generated = schema_files(load_settings())[name]
    on_disk = (SCHEMAS / name).read_bytes()
    assert on_disk == generated, f"schemas/{name} drifted from the code: run `cdr schemas`"


def test_event_schema_and_model_agree_on_samples() -> None:
    schema = orjson.loads((SCHEMAS / "call-ended.v1.schema.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(1)
    for i in range(200):
        event = make_event(rng, "t.example", datetime(2024, 1, 1, tzinfo=UTC))
        if i % 3 == 0:
            event["time_started"] = "2023-12-31 23:40:00"  # naive PBX form
            event["time_answered"] = None
            event["duration"] = max(event["duration"], 1200)  # 20 minutes to the end
            event["emitted_at"] = 1704067200
        validator.validate(event)
        CallEnded.model_validate_json(orjson.dumps(event))


@pytest.mark.parametrize(
    "change",
    [
        {"schema_version": 2},
        {"direction": "sideways"},
        {"duration": -1},
        {"tenant_id": ""},
        {"id": "nope"},
        {"time_started": "tomorrow"},
    ],
)
def test_schema_rejects_what_the_model_rejects(change: dict[str, object]) -> None:
    schema = orjson.loads((SCHEMAS / "call-ended.v1.schema.json").read_bytes())
    event = {**make_event(random.Random(2), "t.example", datetime(2024, 1, 1, tzinfo=UTC)), **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    with pytest.raises(ValueError):
        CallEnded.model_validate_json(orjson.dumps(event))
