"""Rotating the cursor key: cursors signed with the key being rotated out still open."""

from __future__ import annotations

import pytest

from cdr.api.cursor import CursorCodec, Position
from cdr.api.errors import InvalidScrollId

OLD, NEW, OTHER = (b"old-cursor-key-" + b"o" * 20, b"new-cursor-key-" + b"n" * 20, b"someone-else-" + b"x" * 20)


def _position() -> Position:
    return Position("t1.example", {"status": "ANSWERED"}, "asc", 1_700_000_000_000, "0" * 8, 1_000, 50)


def test_a_cursor_from_the_previous_key_opens_after_a_rotation() -> None:
    issued_before = CursorCodec(OLD, 3600).encode(_position())
    rotated = CursorCodec(NEW, 3600, previous=OLD)
    assert rotated.decode(issued_before, tenant="t1.example", now=1_100) == _position()
    issued_after = rotated.encode(_position())
    assert CursorCodec(NEW, 3600).decode(issued_after, tenant="t1.example", now=1_100) == _position()
    with pytest.raises(InvalidScrollId):  # the previous key is dropped: its cursors are done
        CursorCodec(NEW, 3600).decode(issued_before, tenant="t1.example", now=1_100)
    with pytest.raises(InvalidScrollId):
        rotated.decode(CursorCodec(OTHER, 3600).encode(_position()), tenant="t1.example", now=1_100)


def test_a_cursor_does_not_show_its_filters() -> None:
    """Sealed, not just signed: a URL in a proxy log shows neither the phone nor the tenant."""
    import base64

    position = Position("t1.example", {"phones": ["0899888999", "+84899888999"]}, "asc", 0, "0" * 8, 1_000, 50)
    cursor = CursorCodec(NEW, 3600).encode(position)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"0899888999" not in raw and b"t1.example" not in raw and b"phones" not in raw
    assert CursorCodec(NEW, 3600).encode(position) != cursor  # a fresh nonce each time
    assert CursorCodec(NEW, 3600).decode(cursor, tenant="t1.example", now=1_000) == position
