"""The ClickHouse fast path and pydantic agree: every row ClickHouse vouches for is a
valid event with exactly the columns ``to_table`` builds from the model.

Runs the real parse query on a real embedded ClickHouse (chdb)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr.ingest.processor import Invalid, to_table, validate
from cdr.ingest.sqlparse import NaiveTime, SqlParser
from cdr.simulate import make_event
from cdr.store import Store

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('sqlparse')}", database="cdr")
    yield store
    await store.close()


def event(seed: int = 1, **changes: Any) -> dict[str, Any]:
    data = make_event(random.Random(seed), "t.example", datetime(2024, 3, 9, 10, 11, 12, tzinfo=UTC))
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


LATEST = datetime(2030, 1, 1, tzinfo=UTC)  # the newest emitted_at either path accepts here


async def check(store: Store, messages: list[bytes], zone: ZoneInfo = HCM) -> list[bool]:
    """Assert the two paths agree on every message the fast path accepts; its verdicts."""
    parsed = await SqlParser(store, zone, min_batch=1).parse(messages, LATEST)
    verdicts = []
    for row in parsed.to_pylist():
        message = messages[row.pop("n")]
        ok = bool(row.pop("ok"))
        verdicts.append(ok)
        if not ok:
            continue
        model = validate(message, zone, LATEST)
        assert not isinstance(model, Invalid), f"fast path accepted what pydantic refuses: {message!r}: {model}"
        expected = to_table([model]).to_pylist()[0]
        assert row == expected, f"fast path and pydantic differ for {message!r}"
    return verdicts


def test_naive_offset_only_for_zones_without_dst() -> None:
    assert NaiveTime.for_zone(HCM).offset_s == 7 * 3600
    assert NaiveTime.for_zone(ZoneInfo("UTC")).offset_s == 0
    assert NaiveTime.for_zone(BERLIN).offset_s is None


async def test_simulated_traffic_takes_the_fast_path(store: Store) -> None:
    rng = random.Random(3)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    messages = [
        orjson.dumps(make_event(rng, f"t{i % 5}.example", start + timedelta(seconds=37 * i))) for i in range(3000)
    ]
    verdicts = await check(store, messages)
    assert all(verdicts)


STAMP = "2024-03-09T10:11:12"


@pytest.mark.parametrize(
    ("changes", "fast"),
    [
        ({}, True),
        ({"time_ended": STAMP + "Z", "time_answered": None, "time_started": STAMP + "z"}, True),
        ({"time_ended": "2024-03-09 17:11:12", "time_answered": None, "time_started": "2024-03-09 17:00:00"}, True),
        ({"time_ended": STAMP + ".123456+07:00", "time_answered": None, "time_started": STAMP + ".1+07:00"}, True),
        ({"time_ended": STAMP + ".9999999+00:00"}, False),  # 7 digits: pydantic decides
        ({"time_ended": 1710000000, "time_started": 1709999000, "time_answered": None}, True),
        ({"time_ended": 1710000000.5}, False),
        ({"time_ended": 17100000000000}, False),  # milliseconds to pydantic
        ({"time_ended": "2024-02-30T10:11:12+00:00"}, False),
        ({"time_ended": "2024-03-09T24:00:00+00:00"}, False),
        ({"time_ended": STAMP + "+24:00"}, False),
        ({"time_ended": STAMP + "+0700"}, False),
        ({"time_ended": "2024-03-09"}, False),
        ({"time_ended": "1969-12-31T23:59:59+00:00"}, False),
        ({"time_ended": "2106-02-07T06:28:16+00:00"}, False),
        ({"time_ended": "2024-02-29T10:00:60+00:00"}, False),
        (
            {
                "time_ended": "2024-02-29T10:00:00+00:00",
                "time_started": "2024-02-29T09:00:00+00:00",
                "time_answered": None,
            },
            True,
        ),
        ({"time_started": "2024-03-09T10:11:12.000001+00:00", "time_ended": "2024-03-09T10:11:12+00:00"}, False),
        ({"billsec": 10**6, "duration": 5}, False),
        ({"duration": -1}, False),
        ({"duration": 4294967296}, False),
        ({"duration": 4294967295, "billsec": 4294967295}, True),
        ({"duration": 5.0}, False),
        ({"duration": 0.0, "billsec": 0}, False),
        ({"duration": 900.0, "billsec": 5}, False),
        ({"duration": 9e2, "billsec": 5}, False),
        ({"extra_quality": 4.3}, False),
        ({"duration": "5"}, False),
        ({"duration": True}, False),
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
        ({"tenant_id": "Công ty Hà Nội"}, False),  # a tenant id is ASCII, domain-like
        ({"tenant_id": "acme\u200b.vn"}, False),  # zero-width space
        ({"tenant_id": "acme\x07.vn"}, False),
        ({"tenant_id": ".acme.vn"}, False),
        ({"tenant_id": "xn--h-1ga.vn"}, True),
        ({"emitted_at": "2029-12-31T23:59:59+00:00"}, True),
        ({"emitted_at": "2030-01-01T00:00:01+00:00"}, False),  # beyond now + skew (LATEST here)
        ({"cause": "NORMAL\u2028CLEARING"}, False),  # comes back escaped from ClickHouse: to pydantic
        ({"from_number": "0901\u2029"}, False),
        ({"tenant_id": 5}, False),
        ({"tenant_id": None}, False),
        ({"tenant_id": -9223372036854775809}, False),
        ({"tenant_id": "12345678901234567890"}, True),
        ({"extra": 10**30}, False),
        ({"tenant_id": ...}, False),
        ({"direction": "INBOUND"}, True),
        ({"direction": "İnbound"}, False),
        ({"direction": "sideways"}, False),
        ({"status": "no answer"}, True),
        ({"status": " ANSWERED"}, False),
        ({"status": "ANSWERED "}, False),
        ({"status": "straße"}, False),
        ({"status": ""}, False),
        ({"status": "   "}, False),
        ({"recording_url": None}, True),
        ({"recording_url": ...}, True),
        ({"recording_url": ""}, False),
        ({"recording_url": "https://r.example/a/b/c.wav?sig=1/2"}, True),
        ({"recording_url": "https://r.example/a/b/"}, True),
        ({"recording_url": "https://r.example"}, True),
        ({"recording_url": "https://r.example?x=/y.wav"}, False),
        ({"recording_url": "https://[::1/x.wav"}, False),
        ({"recording_url": "ftp://r.example/x.wav"}, False),
        ({"recording_url": "recordings/x.wav"}, False),
        ({"recording_url": "https://r.example/a#frag.wav"}, False),
        ({"extension": None, "receive_dest": None}, True),
        ({"extension": 101}, False),
        ({"receive_dest": "q" * 257}, False),
        ({"sip_call_id": ""}, True),
        ({"cause": None}, False),
        ({"extra": {"nested": [1, 2, {"x": None}]}}, True),
    ],
)
async def test_edge_cases(store: Store, changes: dict[str, Any], fast: bool) -> None:
    base = event(time_started="2024-03-09T10:00:00+00:00", time_answered="2024-03-09T10:00:05+00:00")
    base.update(changes)
    message = json.dumps(
        {k: v for k, v in base.items() if v is not ...}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert await check(store, [message]) == [fast]


async def test_message_shapes_that_go_to_pydantic(store: Store) -> None:
    good = event()
    messages = [
        json.dumps(good).encode(),  # spaces after separators: still fast
        json.dumps(good, ensure_ascii=True).replace("call.ended", "call\\u002eended").encode(),
        orjson.dumps(good)[:-1] + b',"tenant_id":"other"}',  # a duplicate key
        b"[" + orjson.dumps(good) + b"]",
        orjson.dumps(good) + b" trailing",
        orjson.dumps(good).replace(b"t.example", b"t.\xff"),
        b"{}",
        b"",
    ]
    assert await check(store, messages) == [True] + [False] * 7
    # Numbers pydantic's JSON parser may refuse in fields it ignores: the paths must agree.
    tails = [b',"extra":1e999}', b',"x":-0}', b',"duration":-0}', b',"duration":1E2}']
    assert await check(store, [orjson.dumps(good)[:-1] + tail for tail in tails]) == [False] * len(tails)
    # What JSON parsers differ on: each message either stays off the fast path or is
    # one pydantic accepts with the same values (check() asserts the latter).
    odd = [
        orjson.dumps(good).replace(b"NORMAL_CLEARING", b"NORMAL\x01CLEARING"),
        orjson.dumps(good).replace(b"NORMAL_CLEARING", b"NORMAL\tCLEARING"),
        orjson.dumps(good)[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}",
        orjson.dumps(good)[:-1] + b',"n":NaN}',
        b" \n" + orjson.dumps(good) + b"\n ",
        b"\xef\xbb\xbf" + orjson.dumps(good),
        orjson.dumps(good)[:-1] + b',"arr":[1.5, -0, 12345678901234567890, {"k": 2.5}]}',
    ]
    await check(store, odd)


async def test_naive_times_in_a_zone_with_dst_go_to_pydantic(store: Store) -> None:
    message = orjson.dumps(
        event(time_started="2024-03-31 02:30:00", time_answered=None, time_ended="2024-03-31 03:30:00")
    )
    assert await check(store, [message], BERLIN) == [False]
    assert await check(store, [message], HCM) == [True]


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
            "2024-13-09T10:11:12Z",
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


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mutations=st.lists(st.dictionaries(_fields, _values, max_size=3), min_size=20, max_size=60),
    seed=st.integers(0, 1000),
)
async def test_fast_path_never_disagrees_with_pydantic(
    store: Store, mutations: list[dict[str, Any]], seed: int
) -> None:
    messages = []
    for k, changes in enumerate(mutations):
        data = event(seed + k)
        data.update(changes)
        separators = (", ", ": ") if k % 3 == 0 else (",", ":")
        messages.append(json.dumps(data, separators=separators, ensure_ascii=k % 2 == 0).encode())
    await check(store, messages)
