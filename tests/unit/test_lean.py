"""The lean fast path and the model agree: every message the fast path accepts is a
valid event with exactly the columns ``to_table`` builds from ``CallEnded``; what it
does not take is left to the model, never refused by it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr.ingest.lean import LeanParser, NaiveTimes
from cdr.ingest.processor import Invalid, to_table, validate
from cdr.ingest.validation import validate_batch
from cdr.model.event import MAX_CALL_S
from cdr.simulate import make_event
from cdr.tenants import TenantZones

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")  # +09:00 since 1951: naive times take the fast path
NY = ZoneInfo("America/New_York")
LATEST = datetime(2030, 1, 1, tzinfo=UTC)  # the newest emitted_at either path accepts here


def event(seed: int = 1, **changes: Any) -> dict[str, Any]:
    data = make_event(random.Random(seed), "t.example", datetime(2024, 3, 9, 10, 11, 12, tzinfo=UTC))
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def check(
    messages: list[bytes],
    zone: ZoneInfo = HCM,
    tenant_zones: dict[str, ZoneInfo] | None = None,
    max_call_s: int = MAX_CALL_S,
) -> list[bool]:
    """Assert the two paths agree on every message the fast path accepts; its verdicts."""
    parsed = LeanParser(zone, tenant_zones, max_call_s).parse(messages, LATEST)
    accepted = {row.pop("n"): row for row in parsed.rows.to_pylist()}
    assert sorted([*accepted, *parsed.rest]) == list(range(len(messages))), "each message once, rows or rest"
    for n, row in accepted.items():
        model = validate(messages[n], zone, LATEST, tenant_zones=tenant_zones, max_call_s=max_call_s)
        assert not isinstance(model, Invalid), f"fast path accepted what the model refuses: {messages[n]!r}: {model}"
        assert row == to_table([model]).to_pylist()[0], f"fast path and model differ for {messages[n]!r}"
    return [n in accepted for n in range(len(messages))]


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


def test_simulated_traffic_takes_the_fast_path() -> None:
    rng = random.Random(3)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    messages = [
        orjson.dumps(make_event(rng, f"t{i % 5}.example", start + timedelta(seconds=37 * i))) for i in range(3000)
    ]
    assert all(check(messages))


STAMP = "2024-03-09T10:11:12"


@pytest.mark.parametrize(
    ("changes", "fast"),
    [
        ({}, True),
        ({"time_ended": STAMP + "Z", "time_answered": None, "time_started": STAMP + "z"}, False),  # z: the model
        ({"time_ended": "2024-03-09 17:11:12", "time_answered": None, "time_started": "2024-03-09 17:00:00"}, True),
        ({"time_ended": STAMP + ".123456+07:00", "time_answered": None, "time_started": STAMP + ".1+07:00"}, True),
        ({"time_ended": STAMP + ".9999999+00:00"}, False),  # 7 digits: the model decides
        ({"time_ended": 1710000000, "time_started": 1709999000, "time_answered": None}, False),
        ({"time_ended": 1710000000.5}, False),
        ({"time_ended": "2024-02-30T10:11:12+00:00"}, False),
        ({"time_ended": "2023-02-29T10:11:12+00:00"}, False),
        ({"time_ended": "2024-03-09T24:00:00+00:00"}, False),
        ({"time_ended": STAMP + "+24:00"}, False),
        ({"time_ended": STAMP + "+23:59"}, False),  # a day earlier in UTC: before time_started
        ({"emitted_at": STAMP + "+23:59"}, True),
        ({"time_ended": STAMP + "+0700"}, False),
        ({"time_ended": "2024-03-09"}, False),
        ({"time_ended": "1969-12-31T23:59:59+00:00"}, False),
        ({"time_started": "1970-01-01T00:30:00+01:00", "time_answered": None}, False),  # before 1970 in UTC
        ({"time_started": "1975-01-01 10:00:00", "time_answered": None}, False),  # Viet Nam was +08:00
        ({"time_ended": "2106-02-07T06:28:16+00:00"}, False),  # a call of 82 years
        ({"time_ended": "2024-03-10T10:00:00+00:00", "duration": 86_400}, True),  # a day: the longest
        ({"time_ended": "2024-03-10T10:00:00.001+00:00", "duration": 86_400}, False),
        ({"time_ended": "2024-03-09T10:11:14+00:00"}, True),  # 2 s over duration: the tolerance
        ({"time_ended": "2024-03-09T10:11:14.001+00:00"}, False),
        ({"time_ended": "2024-03-09T10:11:00+00:00"}, True),  # duration above the span is taken
        ({"time_ended": "2299-12-31T23:59:59.999999+00:00"}, False),  # a call of 275 years
        ({"time_ended": "2299-12-31T23:59:59-01:00"}, False),  # 2300 in UTC
        ({"time_ended": "2024-02-29T10:00:60+00:00"}, False),
        (
            {
                "time_ended": "2024-02-29T10:00:00+00:00",
                "time_started": "2024-02-29T09:00:00+00:00",
                "time_answered": None,
                "duration": 3600,
            },
            True,
        ),
        ({"time_started": "2024-03-09T10:11:12.000001+00:00", "time_ended": "2024-03-09T10:11:12+00:00"}, False),
        ({"time_answered": "2024-03-09T09:59:59+00:00"}, False),
        ({"time_answered": "2024-03-09T10:11:12.000001+00:00", "time_ended": STAMP + "+00:00"}, False),
        ({"billsec": 10**6, "duration": 5}, False),
        ({"duration": -1}, False),
        ({"duration": 4294967296}, False),
        ({"duration": 4294967295, "billsec": 4294967295}, False),  # longer than a call may last
        ({"duration": 5.0}, False),
        ({"duration": "5"}, False),
        ({"duration": True}, False),
        ({"duration": 18446744073709551615}, False),
        ({"status": 7}, False),
        ({"event": None}, False),
        ({"extra_quality": 4.3}, True),
        ({"schema_version": 2}, False),
        ({"schema_version": "1"}, False),
        ({"event": "call.started"}, False),
        ({"id": "35BF992D-C9E9-4616-A12E-7696A6CECC1B"}, False),
        ({"id": "35bf992dc9e94616a12e7696a6cecc1b"}, False),
        ({"id": "not-a-uuid-at-all-not-a-uuid-at-all!"}, False),
        ({"id": "00000000-0000-0000-0000-000000000000"}, True),
        ({"tenant_id": ""}, False),
        ({"tenant_id": "x" * 128}, True),
        ({"tenant_id": "x" * 129}, False),
        ({"tenant_id": "Công ty Hà Nội"}, False),
        ({"tenant_id": "acme\u200b.vn"}, False),
        ({"tenant_id": "acme.vn\n"}, False),
        ({"tenant_id": ".acme.vn"}, False),
        ({"tenant_id": "xn--h-1ga.vn"}, True),
        ({"emitted_at": "2029-12-31T23:59:59+00:00"}, True),
        ({"emitted_at": "2030-01-01T00:00:01+00:00"}, False),  # beyond now + skew (LATEST here)
        ({"cause": "NORMAL\u2028CLEARING"}, True),  # stored as the character, as the model does
        ({"from_number": "0901\u2029"}, True),
        ({"tenant_id": 5}, False),
        ({"tenant_id": None}, False),
        ({"tenant_id": ...}, False),
        ({"direction": "INBOUND"}, True),
        ({"direction": "Local"}, True),
        ({"direction": "İnbound"}, False),
        ({"direction": "inbound\n"}, False),
        ({"direction": "sideways"}, False),
        ({"status": "no answer"}, True),
        ({"status": " ANSWERED"}, True),
        ({"status": "straße"}, True),
        ({"status": "\x1fbusy\x1c"}, True),  # str.strip() drops these too
        ({"status": ""}, False),
        ({"status": "   "}, True),  # stored empty, as the model does
        ({"recording_url": None}, True),
        ({"recording_url": ...}, True),
        ({"recording_url": ""}, True),
        ({"recording_url": "https://r.example/a/b/c.wav?sig=1/2"}, True),
        ({"recording_url": "https://r.example/a/b/"}, True),
        ({"recording_url": "https://r.example"}, True),
        ({"recording_url": "https://r.example?x=/y.wav"}, True),
        ({"recording_url": "https://[::1/x.wav"}, True),
        ({"recording_url": "ftp://r.example/x.wav"}, True),
        ({"recording_url": "recordings/x.wav"}, True),
        ({"recording_url": "https://r.example/a#frag.wav"}, True),
        ({"recording_url": "https://r.example/a\tb/c.wav"}, True),
        ({"extension": None, "receive_dest": None}, True),
        ({"extension": 101}, False),
        ({"receive_dest": "q" * 257}, False),
        ({"sip_call_id": ""}, True),
        ({"cause": None}, False),
        ({"extra": {"nested": [1, 2, {"x": None}]}}, True),
    ],
)
def test_edge_cases(changes: dict[str, Any], fast: bool) -> None:
    base = event(
        time_started="2024-03-09T10:00:00+00:00", time_answered="2024-03-09T10:00:05+00:00", duration=672, billsec=667
    )
    base.update(changes)
    message = json.dumps(
        {k: v for k, v in base.items() if v is not ...}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert check([message]) == [fast]


def test_one_bad_date_leaves_the_rest_of_the_batch_fast() -> None:
    good = [orjson.dumps(event(seed)) for seed in range(5)]
    bad = orjson.dumps(event(9, time_ended="2024-02-30T10:11:12+00:00"))
    assert check([*good[:2], bad, *good[2:]]) == [True, True, False, True, True, True]


def test_one_value_of_another_type_leaves_the_rest_of_the_batch_fast() -> None:
    good = [orjson.dumps(event(seed)) for seed in range(4)]
    numbers = [orjson.dumps(event(8, cause=17)), orjson.dumps(event(9, duration=3.0))]
    assert check([good[0], numbers[0], *good[1:3], numbers[1], good[3]]) == [True, False, True, True, False, True]


def test_message_shapes_agree() -> None:
    good = event()
    messages = [
        json.dumps(good).encode(),
        json.dumps(good, ensure_ascii=True).replace("call.ended", "call\\u002eended").encode(),
        orjson.dumps(good)[:-1] + b',"tenant_id":"other"}',  # a duplicate key: the last wins in both
        b"[" + orjson.dumps(good) + b"]",
        orjson.dumps(good) + b" trailing",
        orjson.dumps(good).replace(b"t.example", b"t.\xff"),
        b"{}",
        b"",
        orjson.dumps(good)[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}",
        orjson.dumps(good)[:-1] + b',"deep":' + b'{"a":' * 250 + b"1" + b"}" * 250 + b"}",
        b"\xef\xbb\xbf" + orjson.dumps(good),
        orjson.dumps(good)[:-1] + b',"extra":1e999}',
        orjson.dumps(good).replace(b"NORMAL_CLEARING", b"NORMAL\x01CLEARING"),
    ]
    assert check(messages)[:8] == [True, True, True, False, False, False, False, False]


@pytest.mark.parametrize(
    ("started", "ended", "fast"),
    [
        ("2024-03-31 02:30:00", "2024-03-31 03:30:00", False),  # in Berlin's spring-forward gap
        ("2024-10-27 02:30:00", "2024-10-27 02:40:00", False),  # in its autumn fold
        ("2024-06-01 10:00:00", "2024-06-01 11:00:00", False),  # any naive time in a zone with DST
        ("2024-06-01T10:00:00+02:00", "2024-06-01T11:00:00+02:00", True),
    ],
)
def test_naive_times_in_a_zone_with_dst_go_to_the_model(started: str, ended: str, fast: bool) -> None:
    message = orjson.dumps(event(time_started=started, time_answered=None, time_ended=ended, duration=3600))
    assert check([message], BERLIN) == [fast]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
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
            "ANSWERED",
            "inbound",
            "Outbound",
            "35bf992d-c9e9-4616-a12e-7696a6cecc1b",
            "https://r.example/a.wav",
            "1",
        ]
    ),
)
_fields = st.sampled_from(list(event()))


@settings(max_examples=150, deadline=None)
@given(
    mutations=st.lists(st.dictionaries(_fields, _values, max_size=3), min_size=20, max_size=60),
    seed=st.integers(0, 1000),
    zone=st.sampled_from([HCM, BERLIN, ZoneInfo("UTC"), ZoneInfo("America/St_Johns")]),
    tenant_zones=st.sampled_from([None, {"t.example": TOKYO}, {"t.example": BERLIN, "1": HCM}]),
    max_call_s=st.sampled_from([MAX_CALL_S, 600]),
)
def test_fast_path_never_disagrees_with_the_model(
    mutations: list[dict[str, Any]],
    seed: int,
    zone: ZoneInfo,
    tenant_zones: dict[str, ZoneInfo] | None,
    max_call_s: int,
) -> None:
    messages = []
    for k, changes in enumerate(mutations):
        data = event(seed + k)
        data.update(changes)
        separators = (", ", ": ") if k % 3 == 0 else (",", ":")
        messages.append(json.dumps(data, separators=separators, ensure_ascii=k % 2 == 0).encode())
    check(messages, zone, tenant_zones, max_call_s)


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
def test_both_paths_refuse_implausible_times_naming_the_field(changes: dict[str, Any], reason: str) -> None:
    message = implausible(**changes)
    assert check([message], ZoneInfo("UTC")) == [False], "the fast path leaves it to the model"
    refused = validate(message, ZoneInfo("UTC"), LATEST)
    assert isinstance(refused, Invalid) and refused.kind == "invalid_event"
    assert refused.reason.startswith(reason) or reason in refused.reason, refused.reason
    # And so does the batch's verdict, whichever path meets it.
    verdicts = validate_batch([implausible(), message], TenantZones(ZoneInfo("UTC")), LATEST)
    assert verdicts.rows.num_rows == 1 and verdicts.invalid == {1: refused}


def test_the_max_call_length_is_the_settings() -> None:
    hour = implausible(time_ended="2024-03-09T11:00:00Z", duration=3600)
    assert check([hour], ZoneInfo("UTC"), max_call_s=3600) == [True]
    assert check([hour], ZoneInfo("UTC"), max_call_s=3599) == [False]
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
    # Tokyo's and the default's fixed offsets take the fast path; New York's DST the model.
    assert check(messages, HCM, zones) == [True, True, False, True]
    verdicts = validate_batch(messages, TenantZones(HCM, zones), LATEST)
    assert not verdicts.invalid and verdicts.lean == 3 and verdicts.model == 1
    started = verdicts.rows.column("time_started").to_pylist()
    assert started == [
        datetime(2024, 3, 9, 1, tzinfo=UTC),  # +09:00
        datetime(2024, 3, 9, 3, tzinfo=UTC),  # not listed: the PBX timezone, +07:00
        datetime(2024, 3, 9, 15, tzinfo=UTC),  # EST, -05:00
        datetime(2024, 3, 9, 1, tzinfo=UTC),
    ]
