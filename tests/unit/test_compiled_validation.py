"""The compiled validator (``cdr_validate``, rust/cdr-validate) and the model agree.

Every message it stores is a valid event with exactly the columns ``to_table`` builds from
``CallEnded``; every message it refuses the model refuses too, naming the same field
among its errors; what it leaves to the model (rarer shapes) the model decides. Edge
cases, then hypothesis over thousands of valid, almost valid and hostile messages: the
test that catches a rule changed in one place only."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cdr.ingest.processor import Invalid, to_table, validate
from cdr.ingest.validation import NaiveTimes, compiled_verdicts, validate_batch
from cdr.model.event import MAX_CALL_S, CallEnded
from cdr.simulate import make_event
from cdr.tenants import TenantZones

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")  # +09:00 since 1951: naive times are taken compiled
NY = ZoneInfo("America/New_York")
LATEST = datetime(2030, 1, 1, tzinfo=UTC)  # the newest emitted_at either accepts here
ROW, REFUSED, MODEL = "row", "refused", "model"


def event(seed: int = 1, **changes: Any) -> dict[str, Any]:
    data = make_event(random.Random(seed), "t.example", datetime(2024, 3, 9, 10, 11, 12, tzinfo=UTC))
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def model_verdict(
    message: bytes, zone: ZoneInfo, tenant_zones: dict[str, ZoneInfo] | None, max_call_s: int
) -> CallEnded | set[str]:
    """The model's event, or the fields its errors name ("" for the message as a whole)."""
    context = {"timezone": zone, "tenant_zones": tenant_zones or {}, "latest_emitted_at": LATEST}
    try:
        return CallEnded.model_validate_json(message, context=context | {"max_call_s": max_call_s})
    except ValidationError as exc:
        return {str(error["loc"][0]) if error["loc"] else "" for error in exc.errors()}


def check(
    messages: list[bytes],
    zone: ZoneInfo = HCM,
    tenant_zones: dict[str, ZoneInfo] | None = None,
    max_call_s: int = MAX_CALL_S,
) -> list[str]:
    """Assert the compiled validator agrees with the model on every message; its verdicts."""
    compiled = compiled_verdicts(messages, TenantZones(zone, tenant_zones or {}), LATEST, max_call_s)
    rows = {row.pop("n"): row for row in compiled.rows.to_pylist()}
    assert sorted([*rows, *compiled.refused, *compiled.deferred]) == list(range(len(messages))), "each message once"
    verdicts = []
    for n, message in enumerate(messages):
        model = model_verdict(message, zone, tenant_zones, max_call_s)
        if n in rows:
            assert isinstance(model, CallEnded), f"compiled accepted what the model refuses ({model}): {message!r}"
            assert rows[n] == to_table([model]).to_pylist()[0], f"compiled and model rows differ for {message!r}"
            verdicts.append(ROW)
        elif n in compiled.refused:
            field, why = compiled.refused[n]
            assert not isinstance(model, CallEnded), f"compiled refused ({field}: {why}) a valid event: {message!r}"
            assert field in model, f"compiled names {field!r} ({why}), the model {sorted(model)}: {message!r}"
            verdicts.append(REFUSED)
        else:
            verdicts.append(MODEL)
    return verdicts


def test_naive_times_use_the_zones_last_fixed_offset() -> None:
    hcm = NaiveTimes.for_zone(HCM)
    assert hcm.offset_us == 7 * 3600 * 10**6
    # Viet Nam last changed its offset in 1975: naive times before that go to the model.
    assert (
        datetime(1975, 6, 14, tzinfo=UTC)
        < datetime.fromtimestamp(hcm.since_us / 1e6, UTC)
        < datetime(1975, 6, 20, tzinfo=UTC)
    )
    assert NaiveTimes.for_zone(ZoneInfo("UTC")).since_us < 2 * 86_400 * 10**6
    berlin = NaiveTimes.for_zone(BERLIN)
    assert berlin.since_us > berlin.until_us - 400 * 86_400 * 10**6  # DST: no naive time before 2099


def test_simulated_traffic_is_all_compiled() -> None:
    rng = random.Random(3)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    messages = [
        orjson.dumps(make_event(rng, f"t{i % 5}.example", start + timedelta(seconds=37 * i))) for i in range(3000)
    ]
    assert set(check(messages)) == {ROW}


STAMP = "2024-03-09T10:11:12"
NOT_ROW = (REFUSED, MODEL)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, (ROW,)),
        ({"time_ended": STAMP + "Z", "time_answered": None, "time_started": STAMP + "z"}, (MODEL,)),
        ({"time_ended": "2024-03-09 17:11:12", "time_answered": None, "time_started": "2024-03-09 17:00:00"}, (ROW,)),
        ({"time_ended": STAMP + ".123456+07:00", "time_answered": None, "time_started": STAMP + ".1+07:00"}, (ROW,)),
        ({"time_ended": STAMP + ".9999999+00:00"}, (MODEL,)),  # 7 digits: the model decides
        ({"time_ended": 1710000000, "time_started": 1709999000, "time_answered": None}, (MODEL,)),
        ({"time_ended": 1710000000.5}, (MODEL,)),
        ({"time_ended": "2024-02-30T10:11:12+00:00"}, NOT_ROW),
        ({"time_ended": "2023-02-29T10:11:12+00:00"}, NOT_ROW),
        ({"time_ended": "2024-03-09T24:00:00+00:00"}, NOT_ROW),
        ({"time_ended": STAMP + "+24:00"}, NOT_ROW),
        ({"time_ended": STAMP + "+23:59"}, (REFUSED,)),  # a day earlier in UTC: before time_started
        ({"emitted_at": STAMP + "+23:59"}, (ROW,)),
        ({"time_ended": STAMP + "+0700"}, (MODEL,)),
        ({"time_ended": "2024-03-09"}, (MODEL,)),
        ({"time_ended": "1969-12-31T23:59:59+00:00"}, (REFUSED,)),
        ({"time_started": "1970-01-01T00:30:00+01:00", "time_answered": None}, (REFUSED,)),
        ({"time_started": "1975-01-01 10:00:00", "time_answered": None}, (MODEL,)),  # Viet Nam was +08:00
        ({"time_ended": "2106-02-07T06:28:16+00:00"}, (REFUSED,)),  # a call of 82 years
        ({"time_ended": "2024-03-10T10:00:00+00:00", "duration": 86_400}, (ROW,)),  # a day: the longest
        ({"time_ended": "2024-03-10T10:00:00.001+00:00", "duration": 86_400}, (REFUSED,)),
        ({"time_ended": "2024-03-09T10:11:14+00:00"}, (ROW,)),  # 2 s over duration: the tolerance
        ({"time_ended": "2024-03-09T10:11:14.001+00:00"}, (REFUSED,)),
        ({"time_ended": "2024-03-09T10:11:00+00:00"}, (ROW,)),  # duration above the span is taken
        ({"time_ended": "2299-12-31T23:59:59.999999+00:00"}, (REFUSED,)),  # a call of 275 years
        ({"time_ended": "2299-12-31T23:59:59-01:00"}, (REFUSED,)),  # 2300 in UTC
        ({"time_ended": "2024-02-29T10:00:60+00:00"}, NOT_ROW),
        (
            {
                "time_ended": "2024-02-29T10:00:00+00:00",
                "time_started": "2024-02-29T09:00:00+00:00",
                "time_answered": None,
                "duration": 3600,
            },
            (ROW,),
        ),
        ({"time_started": "1900-01-01T00:00:00+00:00", "time_answered": None}, (REFUSED,)),  # stored, too long
        ({"emitted_at": "1900-01-01T00:00:00+00:00"}, (ROW,)),  # the first instant stored
        ({"emitted_at": "1899-12-31T23:59:59.999999+00:00"}, (REFUSED,)),
        ({"emitted_at": "1899-12-31T23:59:59-00:01"}, (ROW,)),
        ({"emitted_at": "1969-12-31T23:59:59.9995+00:00"}, (ROW,)),  # floored to the millisecond
        ({"time_started": "2024-03-09T10:11:12.000001+00:00", "time_ended": "2024-03-09T10:11:12+00:00"}, (REFUSED,)),
        ({"time_answered": "2024-03-09T09:59:59+00:00"}, (REFUSED,)),
        ({"time_answered": "2024-03-09T10:11:12.000001+00:00", "time_ended": STAMP + "+00:00"}, (REFUSED,)),
        ({"billsec": 10**6, "duration": 5}, (REFUSED,)),
        ({"duration": -1}, (REFUSED,)),
        ({"duration": 4294967296}, (REFUSED,)),
        ({"duration": 4294967295, "billsec": 4294967295}, (REFUSED,)),  # longer than a call may last
        ({"duration": 5.0}, (REFUSED,)),
        ({"duration": "5"}, (REFUSED,)),
        ({"duration": True}, (REFUSED,)),
        ({"duration": 18446744073709551615}, (REFUSED,)),
        ({"duration": 10**40}, (REFUSED,)),
        ({"status": 7}, (REFUSED,)),
        ({"event": None}, (REFUSED,)),
        ({"extra_quality": 4.3}, (ROW,)),
        ({"schema_version": 2}, (REFUSED,)),
        ({"schema_version": "1"}, (MODEL,)),
        ({"schema_version": 1.0}, (MODEL,)),
        ({"event": "call.started"}, (REFUSED,)),
        ({"id": "35BF992D-C9E9-4616-A12E-7696A6CECC1B"}, (ROW,)),
        ({"id": "35bf992dc9e94616a12e7696a6cecc1b"}, (ROW,)),
        ({"id": "{35bf992d-c9e9-4616-a12e-7696a6cecc1b}"}, (MODEL,)),
        ({"id": "not-a-uuid-at-all-not-a-uuid-at-all!"}, (MODEL,)),
        ({"id": 35}, (REFUSED,)),
        ({"id": "00000000-0000-0000-0000-000000000000"}, (ROW,)),
        ({"tenant_id": ""}, (REFUSED,)),
        ({"tenant_id": "x" * 128}, (ROW,)),
        ({"tenant_id": "x" * 129}, (REFUSED,)),
        ({"tenant_id": "Công ty Hà Nội"}, (REFUSED,)),
        ({"tenant_id": "acme\u200b.vn"}, (REFUSED,)),
        ({"tenant_id": "acme.vn\n"}, (REFUSED,)),
        ({"tenant_id": ".acme.vn"}, (REFUSED,)),
        ({"tenant_id": "xn--h-1ga.vn"}, (ROW,)),
        ({"emitted_at": "2029-12-31T23:59:59+00:00"}, (ROW,)),
        ({"emitted_at": "2030-01-01T00:00:00.000001+00:00"}, (REFUSED,)),  # beyond now + skew (LATEST here)
        ({"cause": "NORMAL\u2028CLEARING"}, (ROW,)),  # stored as the character, as the model does
        ({"cause": "é" * 128}, (ROW,)),  # 128 characters, 256 bytes
        ({"cause": "é" * 129}, (REFUSED,)),
        ({"from_number": "0901\u2029"}, (ROW,)),
        ({"tenant_id": 5}, (REFUSED,)),
        ({"tenant_id": None}, (REFUSED,)),
        ({"tenant_id": ...}, (REFUSED,)),
        ({"time_answered": ...}, (ROW,)),
        ({"time_started": ...}, (REFUSED,)),
        ({"time_started": None}, (REFUSED,)),
        ({"direction": "INBOUND"}, (ROW,)),
        ({"direction": "Local"}, (ROW,)),
        ({"direction": "İnbound"}, (REFUSED,)),
        ({"direction": "inbound\n"}, (REFUSED,)),
        ({"direction": "sideways"}, (REFUSED,)),
        ({"direction": 1}, (REFUSED,)),
        ({"status": "no answer"}, (ROW,)),
        ({"status": " ANSWERED"}, (ROW,)),
        ({"status": "straße"}, (MODEL,)),  # upper case beyond ASCII: the model's
        ({"status": "\x1fbusy\x1c"}, (ROW,)),  # str.strip() drops these too
        ({"status": "\u3000busy\u00a0"}, (ROW,)),
        ({"status": ""}, (REFUSED,)),
        ({"status": "   "}, (ROW,)),  # stored empty, as the model does
        ({"recording_url": None}, (ROW,)),
        ({"recording_url": ...}, (ROW,)),
        ({"recording_url": ""}, (ROW,)),
        ({"recording_url": "https://r.example/a/b/c.wav?sig=1/2"}, (ROW,)),
        ({"recording_url": "https://r.example/a/b/"}, (ROW,)),
        ({"recording_url": "https://r.example"}, (ROW,)),
        ({"recording_url": "https://r.example?x=/y.wav"}, (ROW,)),
        ({"recording_url": "https://[::1/x.wav"}, (ROW,)),
        ({"recording_url": "ftp://r.example/x.wav"}, (ROW,)),
        ({"recording_url": "recordings/x.wav"}, (ROW,)),
        ({"recording_url": "https://r.example/a#frag.wav"}, (ROW,)),
        ({"recording_url": "https://r.example/a\tb/c.wav"}, (ROW,)),
        ({"recording_url": "https://r.example/bản ghi/x.wav"}, (ROW,)),
        ({"recording_url": "u" * 4097}, (REFUSED,)),
        ({"extension": None, "receive_dest": None}, (ROW,)),
        ({"extension": 101}, (REFUSED,)),
        ({"receive_dest": "q" * 257}, (REFUSED,)),
        ({"sip_call_id": ""}, (ROW,)),
        ({"cause": None}, (REFUSED,)),
        ({"extra": {"nested": [1, 2, {"x": None}]}}, (ROW,)),
    ],
)
def test_edge_cases(changes: dict[str, Any], expected: tuple[str, ...]) -> None:
    base = event(
        time_started="2024-03-09T10:00:00+00:00", time_answered="2024-03-09T10:00:05+00:00", duration=672, billsec=667
    )
    base.update(changes)
    message = json.dumps(
        {k: v for k, v in base.items() if v is not ...}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert check([message])[0] in expected


def test_one_bad_message_leaves_the_rest_of_the_batch_compiled() -> None:
    good = [orjson.dumps(event(seed)) for seed in range(5)]
    bad = [orjson.dumps(event(8, time_ended="2024-02-30T10:11:12+00:00")), orjson.dumps(event(9, cause=17))]
    verdicts = check([*good[:2], bad[0], *good[2:4], bad[1], good[4]])
    assert [v == ROW for v in verdicts] == [True, True, False, True, True, False, True]


def test_message_shapes_agree() -> None:
    good = event()
    raw = orjson.dumps(good)
    messages = [
        json.dumps(good).encode(),
        json.dumps(good, ensure_ascii=True).replace("call.ended", "call\\u002eended").encode(),
        raw[:-1] + b',"tenant_id":"other"}',  # a duplicate key: the last wins in both
        raw[:-1] + b',"duration":"x","duration":' + str(good["duration"]).encode() + b"}",
        b"[" + raw + b"]",
        raw + b" trailing",
        raw.replace(b"t.example", b"t.\xff"),
        b"{}",
        b"",
        b"null",
        b"  " + raw + b"\n ",
        raw[: len(raw) // 2],
        raw[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}",
        raw[:-1] + b',"deep":' + b'{"a":' * 250 + b"1" + b"}" * 250 + b"}",
        raw[:-1] + b',"deep":' + b"[" * 199 + b"]" * 199 + b"}",
        raw[:-1] + b',"deep":' + b"[" * 64 + b"]" * 64 + b"}",
        b"\xef\xbb\xbf" + raw,
        raw[:-1] + b',"extra":1e999}',
        raw[:-1] + b',"extra":NaN}',
        raw[:-1] + b',"extra":-Infinity}',
        raw[:-1] + b',"extra":"\\ud800"}',
        raw[:-1] + b',"extra":"\\udc00\\ud800"}',
        raw[:-1] + b',"extra":"\xed\xa0\x80"}',  # a surrogate in UTF-8: not UTF-8
        raw[:-1] + b',"extra":123456789012345678901234567890}',
        raw[:-1] + b',"extra":01}',
        raw[:-1] + b',"extra":"tab\tinside"}',
        raw.replace(b"NORMAL_CLEARING", b"NORMAL\x01CLEARING"),
        raw.replace(b"NORMAL_CLEARING", b"NORMAL\\u0000CLEARING"),
    ]
    verdicts = check(messages)
    assert verdicts[:12] == [ROW, ROW, ROW, ROW, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, ROW, REFUSED]


@pytest.mark.parametrize(
    ("started", "ended", "expected"),
    [
        ("2024-03-31 02:30:00", "2024-03-31 03:30:00", MODEL),  # in Berlin's spring-forward gap
        ("2024-10-27 02:30:00", "2024-10-27 02:40:00", MODEL),  # in its autumn fold
        ("2024-06-01 10:00:00", "2024-06-01 11:00:00", MODEL),  # any naive time in a zone with DST
        ("2024-06-01T10:00:00+02:00", "2024-06-01T11:00:00+02:00", ROW),
    ],
)
def test_naive_times_in_a_zone_with_dst_go_to_the_model(started: str, ended: str, expected: str) -> None:
    message = orjson.dumps(event(time_started=started, time_answered=None, time_ended=ended, duration=3600))
    assert check([message], BERLIN) == [expected]


_values = st.one_of(
    st.none(),
    st.just(...),  # the field left out
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.integers(min_value=-5, max_value=100_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(max_size=3).map(lambda s: s * 50),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        [
            "2024-03-09T10:11:12+07:00",
            "2024-03-09 10:11:12",
            "2024-03-09T10:11:12.5Z",
            "2024-03-09T10:11:12.123456-23:59",
            "2024-13-09T10:11:12Z",
            "2024-04-31 10:11:12",
            "1970-01-01T00:00:00Z",
            "1899-12-31T23:59:59Z",
            "2299-12-31T23:59:59-01:00",
            "2299-12-31 23:59:59",
            "2024-03-10T10:11:12Z",
            "2024-03-09t10:11:12Z",
            "2024-03-09T10:11Z",
            "2024-03-09T10:11:12,5Z",
            "1710000000",
            "ANSWERED",
            " no answer ",
            "inbound",
            "Outbound",
            "LOCAL",
            "35bf992d-c9e9-4616-a12e-7696a6cecc1b",
            "35BF992DC9E94616A12E7696A6CECC1B",
            "urn:uuid:35bf992d-c9e9-4616-a12e-7696a6cecc1b",
            "https://r.example/a.wav",
            "https://r.example/q?a=1",
            "call.ended",
            "Call.Ended",
            "1",
            "x" * 5000,
            "ệ" * 129,
        ]
    ),
)
_fields = st.sampled_from([*event(), "extra"])
# Raw JSON put after a message's last field, as one more key: a duplicate (the last wins)
# or an unknown field.
_raw_tokens = st.sampled_from(
    [
        b"1.0",
        b"1e0",
        b"-0",
        b"1E400",
        b"NaN",
        b"Infinity",
        b"18446744073709551616",
        b"true",
        b'"\\ud800"',
        b'"\\u0000"',
        b'"\\u00e9"',
        b"[" * 70 + b"]" * 70,
        b"[" * 201 + b"]" * 201,
        b"01",
        b"",
        b'"unterminated',
    ]
)


@st.composite
def _hostile(draw: st.DrawFn, message: bytes) -> bytes:
    """``message``, perhaps with one more key of raw JSON, a byte broken, or cut short."""
    kind = draw(st.sampled_from(["same", "same", "same", "key", "byte", "cut"]))
    if kind == "key":
        key = draw(_fields).encode()
        return message[:-1] + b',"' + key + b'":' + draw(_raw_tokens) + b"}"
    if kind == "byte":
        at = draw(st.integers(0, len(message) - 1))
        return message[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"', b"\\"])) + message[at + 1 :]
    if kind == "cut":
        return message[: draw(st.integers(0, len(message) - 1))]
    return message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(st.dictionaries(_fields, _values, max_size=3), min_size=20, max_size=60),
    seed=st.integers(0, 1000),
    data=st.data(),
    zone=st.sampled_from([HCM, BERLIN, ZoneInfo("UTC"), ZoneInfo("America/St_Johns")]),
    tenant_zones=st.sampled_from([None, {"t.example": TOKYO}, {"t.example": BERLIN, "1": HCM}]),
    max_call_s=st.sampled_from([MAX_CALL_S, 600]),
)
def test_compiled_never_disagrees_with_the_model(
    mutations: list[dict[str, Any]],
    seed: int,
    data: st.DataObject,
    zone: ZoneInfo,
    tenant_zones: dict[str, ZoneInfo] | None,
    max_call_s: int,
) -> None:
    messages = []
    for k, changes in enumerate(mutations):
        fields = event(seed + k)
        fields.update(changes)
        fields = {name: value for name, value in fields.items() if value is not ...}
        separators = (", ", ": ") if k % 3 == 0 else (",", ":")
        message = json.dumps(fields, separators=separators, ensure_ascii=k % 2 == 0).encode()
        messages.append(data.draw(_hostile(message)))
    check(messages, zone, tenant_zones, max_call_s)


_OFFSETS = [None, "Z", "z", "+00:00", "+07:00", "-03:30", "+23:59", "-23:59", "+0700", "+07", "+24:00"]


@st.composite
def _stamp(draw: st.DrawFn, moment: datetime) -> str | int | float:
    """``moment`` (UTC) written in one of the shapes a PBX may use, the odd ones included."""
    shape = draw(st.sampled_from(["text"] * 8 + ["int", "float"]))
    if shape == "int":
        return int(moment.timestamp())
    if shape == "float":
        return moment.timestamp()
    offset = draw(st.sampled_from(_OFFSETS))
    if offset is None or offset in ("Z", "z"):
        local = moment.replace(tzinfo=None)
    else:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23:
            local = moment.replace(tzinfo=None)
        else:
            local = moment.astimezone(timezone(sign * timedelta(hours=hours, minutes=minutes))).replace(tzinfo=None)
    separator = draw(st.sampled_from(["T", " ", "T", "t"]))
    text = local.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    fraction = f"{local.microsecond:06d}"[: draw(st.integers(0, 6))] + "0" * draw(st.sampled_from([0, 0, 1, 3]))
    if fraction:
        text += "." + fraction
    return text + (offset or "")


@settings(max_examples=300, deadline=None)
@given(
    started=st.datetimes(min_value=datetime(1899, 12, 30), max_value=datetime(2299, 12, 31), timezones=st.just(UTC)),
    ring_us=st.integers(0, 120 * 10**6),
    talk_us=st.integers(0, 4000 * 10**6),
    duration_slack=st.integers(-4, 3),
    lag_us=st.integers(-(10**6), 10**9),
    answered=st.booleans(),
    data=st.data(),
    zone=st.sampled_from([HCM, TOKYO, BERLIN, ZoneInfo("UTC")]),
)
def test_times_in_every_shape_agree(
    started: datetime,
    ring_us: int,
    talk_us: int,
    duration_slack: int,
    lag_us: int,
    answered: bool,
    data: st.DataObject,
    zone: ZoneInfo,
) -> None:
    ended = started + timedelta(microseconds=ring_us + talk_us)
    duration = max(0, int((ended - started).total_seconds()) + duration_slack)
    fields = event(
        time_started=data.draw(_stamp(started)),
        time_answered=data.draw(_stamp(started + timedelta(microseconds=ring_us))) if answered else None,
        time_ended=data.draw(_stamp(ended)),
        emitted_at=data.draw(_stamp(ended + timedelta(microseconds=lag_us))),
        duration=duration,
        billsec=min(duration, talk_us // 10**6),
    )
    check([orjson.dumps(fields)], zone, None, 3600)


def implausible(**changes: Any) -> bytes:
    """A call of 20 s from 2024-03-09 10:00:00 UTC, with ``changes``."""
    data = event(
        time_started="2024-03-09T10:00:00Z",
        time_answered=None,
        time_ended="2024-03-09T10:00:20Z",
        duration=20,
        billsec=0,
        emitted_at="2024-03-09T10:00:21Z",
    )
    return orjson.dumps(data | changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"time_started": "1850-01-01T00:00:00Z"}, "time_started: 1850-01-01T00:00:00+00:00 is outside 1900-01-01"),
        ({"time_started": "1899-12-31T23:59:59Z"}, "time_started: 1899-12-31T23:59:59+00:00 is outside"),
        ({"time_ended": "2350-01-01T00:00:00Z"}, "time_ended: 2350-01-01T00:00:00+00:00 is outside"),
        ({"time_ended": "2299-12-31T23:59:59-01:00"}, "time_ended: 2299-12-31T23:59:59-01:00 is outside"),
        ({"time_ended": "2299-12-31 23:59:59"}, "event: time_ended is 8703813599 s after"),  # naive: UTC here
        ({"time_answered": "1899-12-31T23:59:59Z"}, "time_answered: 1899-12-31T23:59:59+00:00 is outside"),
        ({"emitted_at": "1899-12-31T23:59:59Z"}, "emitted_at: 1899-12-31T23:59:59+00:00 is outside"),
        ({"time_ended": "2024-03-10T10:00:00Z"}, "event: duration (20) is shorter than time_ended - time_started"),
        (
            {"time_ended": "2024-03-10T10:00:01Z", "duration": 86_401, "billsec": 0},
            "event: time_ended is 86401 s after time_started, longer than a call may last (86400 s",
        ),
        ({"duration": 86_401}, "event: duration (86401) is longer than a call may last (86400 s"),
        ({"time_ended": "2024-03-09T10:00:22.000001Z"}, "(22.000001 s) by more than 2 s"),
    ],
)
def test_implausible_times_are_refused_in_the_models_words(changes: dict[str, Any], reason: str) -> None:
    message = implausible(**changes)
    assert check([message], ZoneInfo("UTC"))[0] in NOT_ROW
    refused = validate(message, ZoneInfo("UTC"), LATEST)
    assert isinstance(refused, Invalid) and refused.kind == "invalid_event"
    assert refused.reason.startswith(reason) or reason in refused.reason, refused.reason
    # And so does the batch's verdict: the dead-letter reason is the model's.
    verdicts = validate_batch([implausible(), message], TenantZones(ZoneInfo("UTC")), LATEST)
    assert verdicts.rows.num_rows == 1 and verdicts.invalid == {1: refused}


def test_the_max_call_length_is_the_settings() -> None:
    hour = implausible(time_ended="2024-03-09T11:00:00Z", duration=3600)
    assert check([hour], ZoneInfo("UTC"), max_call_s=3600) == [ROW]
    assert check([hour], ZoneInfo("UTC"), max_call_s=3599) == [REFUSED]
    refused = validate_batch([hour], TenantZones(ZoneInfo("UTC")), LATEST, max_call_s=3599).invalid[0]
    assert "longer than a call may last (3599 s, CDR_MAX_CALL_SECONDS)" in refused.reason


def test_naive_times_are_read_in_each_tenants_zone() -> None:
    def naive(tenant: str) -> bytes:
        return implausible(
            tenant_id=tenant,
            time_started="2024-03-09 10:00:00",
            time_ended="2024-03-09 10:00:20",
            emitted_at="2024-03-09 10:00:21",
        )

    zones = {"tokyo.example": TOKYO, "ny.example": NY}
    messages = [naive("tokyo.example"), naive("hcm.example"), naive("ny.example"), naive("tokyo.example")]
    # Tokyo's and the default's fixed offsets are taken compiled; New York's DST by the model.
    assert check(messages, HCM, zones) == [ROW, ROW, MODEL, ROW]
    verdicts = validate_batch(messages, TenantZones(HCM, zones), LATEST)
    assert not verdicts.invalid and verdicts.compiled == 3 and verdicts.model == 1
    started = verdicts.rows.column("time_started").to_pylist()
    assert started == [
        datetime(2024, 3, 9, 1, tzinfo=UTC),  # +09:00
        datetime(2024, 3, 9, 3, tzinfo=UTC),  # not listed: the PBX timezone, +07:00
        datetime(2024, 3, 9, 15, tzinfo=UTC),  # EST, -05:00
        datetime(2024, 3, 9, 1, tzinfo=UTC),
    ]


def test_the_validator_takes_only_a_list_of_bytes() -> None:
    with pytest.raises(TypeError):
        compiled_verdicts(["{}"], TenantZones(HCM), LATEST)  # type: ignore[list-item]
