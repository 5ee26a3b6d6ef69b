"""A stream's events are framed as sse_starlette frames them: one data line per item,
whatever its text holds (line breaks of every kind inside its strings)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st
from sse_starlette import ServerSentEvent

from cdr.api.feed import _event

CURSORS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1)


@given(item=st.dictionaries(st.text(), st.text() | st.integers(-(2**63), 2**63 - 1) | st.none()), cursor=CURSORS)
def test_an_event_is_framed_as_the_library_frames_it(item: dict[str, object], cursor: str) -> None:
    data = orjson.dumps(item)
    assert _event(data, cursor) == ServerSentEvent(data.decode(), id=cursor).encode()
    assert _event(data, cursor).count(b"\n") == 3
