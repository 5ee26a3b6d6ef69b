"""The call-ended event's rules (spec/EVENTS.md)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from pydantic import ValidationError

from cdr.model.event import DURATION_TOLERANCE_S, CallEnded
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
    e = parse(event(time_started=value, time_answered=None, time_ended="2021-02-17T17:30:50+07:00"))
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


NY = ZoneInfo("America/New_York")


def refusal(data: dict[str, Any], **context: Any) -> str:
    """The reason the pipeline gives for refusing ``data`` (as the dead-letter header says it)."""
    from cdr.ingest.processor import Invalid, validate

    refused = validate(orjson.dumps(data), context.pop("zone", UTC), **context)
    assert isinstance(refused, Invalid), f"accepted: {data}"
    return refused.reason


def call(started: str, ended: str, duration: int, **changes: Any) -> dict[str, Any]:
    """A call of consistent times unless ``changes`` say otherwise."""
    return event(time_started=started, time_answered=None, time_ended=ended, duration=duration, billsec=0) | changes


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (call("1850-01-01T00:00:00Z", "1850-01-01T00:00:20Z", 20), "time_started"),
        (call("1899-12-31T23:59:40Z", "1899-12-31T23:59:59.999Z", 20), "time_started"),
        (call("2021-02-17T10:00:00Z", "2350-01-01T00:00:00Z", 20), "time_ended"),
        (call("2299-12-31T23:59:30Z", "2300-01-01T00:00:10Z", 40), "time_ended"),
        # 2299 in its own offset, 2300 in UTC: the bound is after conversion.
        (call("2299-12-31T22:59:50-01:00", "2299-12-31T23:00:10-01:00", 20), "time_ended"),
        (
            call("2021-02-17T10:00:00Z", "2021-02-17T10:00:20Z", 20, time_answered="1899-12-31T22:59:59-01:00"),
            "time_answered",
        ),
        (call("2021-02-17T10:00:00Z", "2021-02-17T10:00:20Z", 20, emitted_at="1899-12-31T23:59:59Z"), "emitted_at"),
        # Integer Unix seconds before 1900.
        (call("2021-02-17T10:00:00Z", "2021-02-17T10:00:20Z", 20, emitted_at=-2_208_988_801), "emitted_at"),
        # Naive, in a zone whose 1900-01-01 07:00 is still 1899 in UTC (+07:06:40 then).
        (call("1900-01-01 07:00:00", "1900-01-01 07:00:20", 20), "time_started"),
    ],
)
def test_times_outside_what_the_store_and_api_hold_are_refused(data: dict[str, Any], field: str) -> None:
    reason = refusal(data, zone=HCM)
    assert reason.startswith(f"{field}: ") and "1900-01-01 to 2299-12-31 UTC" in reason


@pytest.mark.parametrize(
    ("started", "ended"),
    [("1900-01-01T00:00:00Z", "1900-01-01T00:00:20Z"), ("2299-12-31T23:59:39.999Z", "2299-12-31T23:59:59.999Z")],
)
def test_the_first_and_last_moments_the_store_holds_are_taken(started: str, ended: str) -> None:
    e = parse(call(started, ended, 20))
    assert e.time_ended - e.time_started == timedelta(seconds=20)


def test_a_call_of_176_years_is_refused_naming_its_span() -> None:
    # Both ends inside the years the store holds; 20 s of duration over 176 years of span.
    reason = refusal(call("1901-01-01T00:00:00Z", "2077-01-01T00:00:20Z", 20))
    assert (
        "time_ended is 5554137620 s after" in reason
        and "longer than a call may last (86400 s, CDR_MAX_CALL_SECONDS)" in reason
    )


def test_a_call_longer_than_the_configured_maximum_is_refused() -> None:
    ok = call("2021-02-17T10:00:00Z", "2021-02-17T11:00:00Z", 3600)
    assert not isinstance(parse(ok), Exception)
    reason = refusal(ok, max_call_s=3599)
    assert (
        reason
        == "event: time_ended is 3600 s after time_started, longer than a call may last (3599 s, CDR_MAX_CALL_SECONDS)"
    )
    # The duration counts too, whatever the times say.
    long = call("2021-02-17T10:00:00Z", "2021-02-17T10:00:10Z", 3600)
    assert refusal(long, max_call_s=3599).startswith("event: duration (3600) is longer than a call may last (3599 s")


def test_a_day_between_start_and_end_of_a_20_s_call_is_refused() -> None:
    reason = refusal(call("2021-02-17T10:00:00Z", "2021-02-18T10:00:00Z", 20))
    assert reason == "event: duration (20) is shorter than time_ended - time_started (86400 s) by more than 2 s"


@pytest.mark.parametrize(
    ("ended", "accepted"),
    [
        (f"2021-02-17T10:00:{20 + DURATION_TOLERANCE_S:02d}Z", True),  # whole-second rounding, both ways
        (f"2021-02-17T10:00:{20 + DURATION_TOLERANCE_S:02d}.001Z", False),
        ("2021-02-17T10:00:05Z", True),  # a duration above the span: the contract's examples have it
    ],
)
def test_duration_agrees_with_the_span_within_the_tolerance(ended: str, accepted: bool) -> None:
    data = call("2021-02-17T10:00:00Z", ended, 20)
    if accepted:
        assert parse(data).duration == 20
    else:
        assert refusal(data).startswith("event: duration (20) is shorter than time_ended - time_started (22.001 s)")


def test_the_span_is_measured_in_utc_across_a_daylight_saving_change() -> None:
    # New York springs forward at 02:00 on 2021-03-14: 01:59 to 03:01 on the wall is 2 minutes.
    e = CallEnded.model_validate_json(
        orjson.dumps(call("2021-03-14 01:59:00", "2021-03-14 03:01:00", 120)), context={"timezone": NY}
    )
    assert e.time_ended.astimezone(UTC) - e.time_started.astimezone(UTC) == timedelta(minutes=2)


def test_naive_times_are_read_in_the_tenants_zone() -> None:
    data = call("2021-02-17 10:00:00", "2021-02-17 10:00:20", 20, emitted_at="2021-02-17 10:00:21")
    context = {"timezone": HCM, "tenant_zones": {"ny.example": NY}}
    ny = CallEnded.model_validate_json(orjson.dumps(data | {"tenant_id": "ny.example"}), context=context)
    other = CallEnded.model_validate_json(orjson.dumps(data | {"tenant_id": "other.example"}), context=context)
    assert ny.time_started == datetime(2021, 2, 17, 15, 0, tzinfo=UTC)  # EST, UTC-5
    assert ny.emitted_at == datetime(2021, 2, 17, 15, 0, 21, tzinfo=UTC)
    assert other.time_started == datetime(2021, 2, 17, 3, 0, tzinfo=UTC)  # not listed: the PBX timezone
    # An aware time is an instant whatever the tenant's zone.
    aware = data | {"tenant_id": "ny.example", "time_started": "2021-02-17T10:00:00+07:00"}
    with pytest.raises(ValidationError, match="time_ended"):  # 10:00+07:00 is 03:00 UTC: a 12-hour span
        CallEnded.model_validate_json(orjson.dumps(aware), context=context)
