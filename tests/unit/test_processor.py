"""Message -> event -> row mapping, and the reasons given for bad messages."""

from __future__ import annotations

import random
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr.ingest.processor import SCHEMA, Invalid, recording_file, to_table
from cdr.model.event import CallEnded
from cdr.simulate import make_event
from tests.helpers import parse_event

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def sample(**changes: object) -> bytes:
    data = make_event(random.Random(7), "t.example", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    data.update(changes)
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (None, "empty", "tombstone"),
        (b"{oops", "not_json", "JSON"),
        (b"\xff\xfe\x00", "not_json", "JSON"),
        (b"[1, 2]", "not_object", "event"),
        (b'"text"', "not_object", "event"),
        (b"x" * 70_000, "too_large", "70000 bytes"),
    ],
)
def test_invalid_messages_say_why(value: bytes | None, kind: str, text: str) -> None:
    result = parse_event(value, HCM, 65_536)
    assert isinstance(result, Invalid)
    assert result.kind == kind
    assert text in result.reason


def test_invalid_event_names_every_bad_field() -> None:
    result = parse_event(sample(duration="x", direction="up"), HCM, 65_536)
    assert isinstance(result, Invalid) and result.kind == "invalid_event"
    assert "duration:" in result.reason and "direction:" in result.reason


def test_unknown_schema_version_kind() -> None:
    result = parse_event(sample(schema_version=9), HCM, 65_536)
    assert isinstance(result, Invalid) and result.kind == "unknown_schema_version"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        (None, ""),
        ("", ""),
        ("https://recording.demo/ad4c9b90-c071-405a-9723-980d2e5e1623.wav", "ad4c9b90-c071-405a-9723-980d2e5e1623.wav"),
        ("https://r.example/2024/01/abcd.mp3?sig=1&exp=2", "abcd.mp3"),
        ("/var/spool/recordings/abcd.mp3", "abcd.mp3"),
        ("abcd.mp3", "abcd.mp3"),
    ],
)
def test_recording_file(url: str | None, name: str) -> None:
    assert recording_file(url) == name


def _by_urlsplit(url: str) -> str:
    path = url.split("?", 1)[0]
    if "://" in url:
        with suppress(ValueError):
            path = urlsplit(url).path
    return path.rstrip("/").rsplit("/", 1)[-1]


@settings(max_examples=500)
@given(
    scheme=st.sampled_from(["https", "http", "s3", "HTTP", "a+b.c-d", "1x", "", "ht tp", "\x00http"]),
    rest=st.text(alphabet=st.sampled_from(list("/ab.?#[]:@%\t\n é\x01")), max_size=20),
)
def test_recording_file_shortcut_is_urlsplit(scheme: str, rest: str) -> None:
    # The plain-URL shortcut must name the same file urlsplit does, whatever the URL.
    url = f"{scheme}://{rest}"
    assert recording_file(url) == _by_urlsplit(url)


def test_row_mapping() -> None:
    event = parse_event(
        sample(
            direction="local",
            recording_url=None,
            extension=None,
            receive_dest=None,
            status="busy",
            time_started="2021-02-18 17:20:58",
            time_answered=None,
            time_ended="2021-02-18 17:21:05",
            duration=7,
            billsec=0,
            emitted_at=1613643665,
        ),
        HCM,
        65_536,
    )
    assert isinstance(event, CallEnded)
    table = to_table([event])
    assert table.schema == SCHEMA
    row = table.to_pylist()[0]
    assert row["direction"] == 3
    assert row["recording_url"] == row["recording_file"] == row["extension"] == row["receive_dest"] == ""
    assert row["status"] == "BUSY"
    assert row["time_answered"] is None
    # 17:20:58 in Ho Chi Minh City is 10:20:58 UTC.
    assert row["time_started"] == datetime(2021, 2, 18, 10, 20, 58, tzinfo=UTC)
    assert row["time_ended"] == datetime(2021, 2, 18, 10, 21, 5, tzinfo=UTC)
    assert row["emitted_at"] == datetime(2021, 2, 18, 10, 21, 5, tzinfo=UTC)
    assert row["id"] == str(event.id)


def test_empty_batch_is_an_empty_table() -> None:
    table = to_table([])
    assert table.num_rows == 0 and table.schema == SCHEMA
    assert isinstance(table, pa.Table)


def test_sub_millisecond_times_truncate_to_milliseconds() -> None:
    event = parse_event(
        sample(
            time_started="2021-02-17T17:30:35.123456+07:00",
            time_answered=None,
            time_ended="2021-02-17T10:31:00.999999Z",
            duration=25,
            billsec=0,
        ),
        HCM,
        65_536,
    )
    assert isinstance(event, CallEnded)
    row = to_table([event]).to_pylist()[0]
    assert row["time_started"] == datetime(2021, 2, 17, 10, 30, 35, 123_000, tzinfo=UTC)
    assert row["time_ended"] == datetime(2021, 2, 17, 10, 31, 0, 999_000, tzinfo=UTC)
