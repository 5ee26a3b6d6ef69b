"""A dead letter's headers: the original ones kept, stale DLQ ones dropped whatever their case."""

from __future__ import annotations

from cdr.ingest.dlq import HEADER_ERROR, HEADER_OFFSET, DeadLetter
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
