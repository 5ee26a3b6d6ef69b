"""A dead letter's headers: the original ones kept, stale DLQ ones dropped whatever their case."""

from __future__ import annotations

from cdr.ingest.dlq import HEADER_ERROR, HEADER_OFFSET, HEADER_ORIGINAL_SIZE, DeadLetter
from cdr.ingest.processor import Invalid


def test_stale_dlq_headers_are_dropped_case_insensitively() -> None:
    letter = DeadLetter(
        topic="calls",
        partition=2,
        offset=41,
        timestamp=0,
        key=b"k",
        value=b"{",
        headers=(("X-DLQ-Error", b"forged"), ("x-dlq-source-offset", b"0"), ("trace-id", b"t1")),
        invalid=Invalid("not_json", "event: Invalid JSON"),
    )
    headers = letter.dlq_headers()
    names = [name for name, _ in headers]
    assert ("trace-id", b"t1") in headers
    assert [n.lower() for n in names].count(HEADER_ERROR) == 1 and "X-DLQ-Error" not in names
    assert dict(headers)[HEADER_OFFSET] == b"41" and dict(headers)[HEADER_ERROR] == b"event: Invalid JSON"


def test_a_value_over_the_limit_is_cut_and_its_size_kept() -> None:
    big = DeadLetter("calls", 0, 7, 0, None, b"x" * 100, (), Invalid("too_large", "over the limit"), max_value_bytes=10)
    assert big.dlq_value == b"x" * 10
    assert dict(big.dlq_headers())[HEADER_ORIGINAL_SIZE] == b"100"
    small = DeadLetter("calls", 0, 8, 0, None, b"x" * 10, (), Invalid("not_json", "nope"), max_value_bytes=10)
    assert small.dlq_value == b"x" * 10 and HEADER_ORIGINAL_SIZE not in dict(small.dlq_headers())


def test_a_message_without_key_or_value_goes_as_an_empty_value() -> None:
    # aiokafka refuses to send a record with neither; that stopped ingest at the DLQ send.
    keyless = DeadLetter("calls", 0, 9, 0, None, None, (), Invalid("empty", "message has no value (tombstone)"))
    assert keyless.dlq_value == b""
    keyed = DeadLetter("calls", 0, 10, 0, b"k", None, (), Invalid("empty", "message has no value (tombstone)"))
    assert keyed.dlq_value is None
