"""The call-ended event's rules (spec/EVENTS.md)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from pydantic import ValidationError

from cdr.model.event import CallEnded
from cdr.simulate import make_event

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def event(**changes: Any) -> dict[str, Any]:
    base = make_event(random.Random(1), "test.tel4vn.com", datetime(2021, 2, 17, 10, 30, 46, tzinfo=UTC))
    base.update(
        status="ANSWERED",
        duration=15,
        billsec=11,
        time_started="2021-02-17T17:30:35+07:00",
        time_answered="2021-02-17T17:30:43+07:00",
        time_ended="2021-02-17T17:30:46+07:00",
    )
    base.update(changes)
    return base


def parse(data: dict[str, Any]) -> CallEnded:
    return CallEnded.model_validate_json(orjson.dumps(data), context={"timezone": HCM})


def test_valid_event_parses() -> None:
    e = parse(event())
    assert e.duration == 15 and e.billsec == 11 and e.status == "ANSWERED"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021-02-17T17:30:35+07:00", datetime(2021, 2, 17, 10, 30, 35, tzinfo=UTC)),
        ("2021-02-17T10:30:35Z", datetime(2021, 2, 17, 10, 30, 35, tzinfo=UTC)),
        (1613557835, datetime(2021, 2, 17, 10, 30, 35, tzinfo=UTC)),
        # Naive: the PBX's local time (Asia/Ho_Chi_Minh, UTC+7).
        ("2021-02-17 17:30:35", datetime(2021, 2, 17, 10, 30, 35, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(value: object, expected: datetime) -> None:
    e = parse(event(time_started=value, time_answered=None, time_ended="2021-02-17T17:31:00+07:00"))
    assert e.time_started == expected
    assert e.time_started.tzinfo is not None


def test_naive_timestamp_without_context_is_utc() -> None:
    e = CallEnded.model_validate_json(orjson.dumps(event(emitted_at="2021-02-17 17:30:35")))
    assert e.emitted_at == datetime(2021, 2, 17, 17, 30, 35, tzinfo=UTC)


def test_status_upper_and_direction_case_insensitive() -> None:
    e = parse(event(status="no answer", direction="OutBound"))
    assert e.status == "NO ANSWER"
    assert e.direction == "outbound"


def test_optional_fields_may_be_absent_or_null() -> None:
    data = event(recording_url=None, receive_dest=None, time_answered=None)
    del data["extension"]
    e = parse(data)
    assert e.extension is None and e.recording_url is None and e.time_answered is None


def test_unknown_fields_ignored() -> None:
    assert parse(event(pbx_node="fs-03", extra={"a": 1})).tenant_id == "test.tel4vn.com"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event": "call.started"}, "event"),
        ({"schema_version": 2}, "schema_version"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "x" * 129}, "tenant_id"),
        ({"tenant_id": "acme\u200b.vn"}, "tenant_id"),
        ({"tenant_id": "acme\n.vn"}, "tenant_id"),
        ({"tenant_id": "Công ty"}, "tenant_id"),
        ({"tenant_id": "acme.vn\n"}, "tenant_id"),
        ({"id": "not-a-uuid"}, "id"),
        ({"duration": -1}, "duration"),
        ({"duration": "15"}, "duration"),
        ({"duration": 1.5}, "duration"),
        ({"billsec": True}, "billsec"),
        ({"direction": "sideways"}, "direction"),
        ({"status": ""}, "status"),
        ({"time_started": "yesterday"}, "time_started"),
        ({"from_number": None}, "from_number"),
        ({"sip_call_id": 42}, "sip_call_id"),
    ],
)
def test_field_rules(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse(event(**changes))
    assert field in {str(err["loc"][0]) for err in info.value.errors() if err["loc"]}


@pytest.mark.parametrize(
    "missing",
    [
        "event",
        "schema_version",
        "tenant_id",
        "emitted_at",
        "id",
        "sip_call_id",
        "cause",
        "duration",
        "billsec",
        "direction",
        "from_number",
        "to_number",
        "time_started",
        "time_ended",
        "status",
    ],
)
def test_required_fields(missing: str) -> None:
    data = event()
    del data[missing]
    with pytest.raises(ValidationError):
        parse(data)


def test_billsec_not_over_duration() -> None:
    with pytest.raises(ValidationError, match="billsec"):
        parse(event(billsec=16))


def test_end_not_before_start() -> None:
    with pytest.raises(ValidationError, match="time_ended"):
        parse(event(time_ended="2021-02-17T17:30:34+07:00", time_answered=None))


def test_answered_within_call() -> None:
    with pytest.raises(ValidationError, match="time_answered"):
        parse(event(time_answered="2021-02-17T17:31:00+07:00"))


def test_mixed_offsets_compare_as_instants() -> None:
    start = datetime(2021, 2, 17, 10, 30, 35, tzinfo=UTC)
    e = parse(
        event(
            time_started=start.isoformat(),
            time_answered=None,
            time_ended=(start + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=7))).isoformat(),
        )
    )
    assert e.time_ended - e.time_started == timedelta(seconds=5)


def test_emitted_at_beyond_the_allowed_skew_is_refused() -> None:
    from cdr.ingest.processor import Invalid, validate

    latest = datetime(2021, 2, 17, 12, tzinfo=UTC)
    ok = orjson.dumps(event(emitted_at="2021-02-17T12:00:00+00:00"))
    late = orjson.dumps(event(emitted_at="2021-02-17T12:00:01+00:00"))
    assert not isinstance(validate(ok, UTC, latest), Invalid)
    refused = validate(late, UTC, latest)
    assert isinstance(refused, Invalid) and refused.kind == "invalid_event"
    assert "emitted_at is later than 2021-02-17T12:00:00+00:00" in refused.reason
    assert not isinstance(validate(late, UTC), Invalid)  # no bound given: no check
