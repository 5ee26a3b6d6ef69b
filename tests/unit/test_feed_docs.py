"""The OpenAPI document (schemas/openapi.json; the same document is served at /openapi.json
and shown by /docs, and test_contracts keeps the file current) describes the change feed:
both routes, their parameters, their answers (the stream's as text/event-stream with its
item schema) and the guarantees (issue 27 item 4, README "Change feed")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import orjson
import pytest

from cdr.store.feed import Change

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FILTERS = {"direction", "status", "extension", "cause"}
GUARANTEES = (
    "at-least-once",
    "same id and version",
    "never delivered after a newer version of the same call",
    "cursor stays valid for the feed's retention",
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((SCHEMAS / "openapi.json").read_bytes())
    return loaded


def _operation(document: dict[str, Any], path: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][path]["get"]
    return operation


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        resolved: dict[str, Any] = document["components"]["schemas"][name]
        return resolved
    return node


def test_the_pull_route_has_its_parameters_answer_and_guarantees(document: dict[str, Any]) -> None:
    operation = _operation(document, "/v1/cdr/changes")
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"cursor", "since", "limit", "wait", *FILTERS}
    assert all(p["in"] == "query" for p in params.values())
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (1, 1000)
    assert params["wait"]["schema"]["maximum"] == 30
    answer = _resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(answer["required"]) == {"data", "cursor"}
    assert answer["properties"]["data"]["items"] == {"$ref": "#/components/schemas/Change"}
    assert {"400", "401", "429", "503"} <= set(operation["responses"])
    assert "cursor" in operation["responses"]["400"]["description"]
    for promise in GUARANTEES:
        assert promise in operation["description"], promise


def test_the_stream_is_described_as_server_sent_events_of_changes(document: dict[str, Any]) -> None:
    operation = _operation(document, "/v1/cdr/changes/stream")
    params = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert params == {("cursor", "query"), ("since", "query"), ("Last-Event-ID", "header")} | {
        (name, "query") for name in FILTERS
    }
    media = operation["responses"]["200"]["content"]
    assert list(media) == ["text/event-stream"]
    assert media["text/event-stream"]["x-itemSchema"] == {"$ref": "#/components/schemas/Change"}
    assert "429" in operation["responses"] and "Retry-After" in operation["description"]
    assert "Last-Event-ID" in operation["description"] and "heartbeat" in operation["responses"]["200"]["description"]
    for promise in GUARANTEES:
        assert promise in operation["description"], promise


def test_the_item_schema_accepts_an_item_as_the_feed_renders_it_and_nothing_else(document: dict[str, Any]) -> None:
    schema = {**document["components"]["schemas"]["Change"], "components": document["components"]}
    item = Change(
        tenant="t.example",
        id="01b7d166-9c1b-4f0e-8a2b-3c4d5e6f7a8b",
        sip_call_id="abc@pbx",
        cause="NORMAL_CLEARING",
        duration=30,
        billsec=20,
        direction=1,
        recording_url="",
        extension="101",
        from_number="0899888999",
        to_number="02873001234",
        receive_dest="",
        time_started_ms=1_765_000_000_000,
        time_answered_ms=None,
        time_ended_ms=1_765_000_030_000,
        status="ANSWERED",
        emitted_ms=1_765_000_030_123,
        partition=0,
        offset=7,
        change="created",
    ).render(ZoneInfo("Asia/Ho_Chi_Minh"))
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(item)
    assert re.fullmatch(schema["properties"]["version"]["pattern"], item["version"])
    for wrong in ({"change": "deleted"}, {"version": "2026-12-07 10:00:00"}, {"tenant_id": "t.example"}):
        assert not validator.is_valid({**item, **wrong}), wrong
