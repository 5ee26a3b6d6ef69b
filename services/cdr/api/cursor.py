"""Scroll cursors: signed, stateless keyset positions. Pure: no I/O.

A cursor holds the tenant, the normalized filters, the order, the batch size, the
last returned ``(time_started, id)`` and when it was issued, signed with HMAC-SHA256. Any API
replica with the same secret can continue the scroll.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from cdr.api.errors import InvalidScrollId

_VERSION = 1


@dataclass(frozen=True)
class Position:
    tenant: str
    filters: dict[str, Any]
    order: str
    time_started_ms: int
    id: str
    issued_at: int
    limit: int


class CursorCodec:
    """Signs with ``secret``; also opens cursors signed with ``previous`` (the key being
    rotated out), so a key rotation does not break the scrolls in progress."""

    def __init__(self, secret: bytes, ttl_s: int, previous: bytes | None = None) -> None:
        self._secret = secret
        self._keys = (secret,) if previous is None else (secret, previous)
        self._ttl = ttl_s

    def encode(self, position: Position) -> str:
        payload = orjson.dumps(
            {
                "v": _VERSION,
                "t": position.tenant,
                "f": position.filters,
                "o": position.order,
                "k": [position.time_started_ms, position.id],
                "i": position.issued_at,
                "l": position.limit,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        body = _b64(payload)
        return body + "." + _b64(self._sign(body, self._secret))

    def decode(self, token: str, *, tenant: str, now: int) -> Position:
        """Verify and open a cursor; any problem is an InvalidScrollId (400)."""
        body, sep, signature = token.partition(".")
        if not sep or len(token) > 4096:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id")
        try:
            given = _unb64(signature)
        except ValueError:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id") from None
        # Exactly the encoding we issue: base64 tolerates padding, other alphabets and
        # unused trailing bits, so several strings would otherwise open one cursor.
        if _b64(given) != signature:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id")
        # Every key is tried (no early exit), so timing says nothing about which matched.
        matches = [hmac.compare_digest(given, self._sign(body, key)) for key in self._keys]
        if not any(matches):
            raise InvalidScrollId("scroll_id is not valid (altered, truncated or from elsewhere)", param="scroll_id")
        try:
            data = orjson.loads(_unb64(body))
            position = Position(
                tenant=str(data["t"]),
                filters=dict(data["f"]),
                order=str(data["o"]),
                time_started_ms=int(data["k"][0]),
                id=str(data["k"][1]),
                issued_at=int(data["i"]),
                limit=int(data["l"]),
            )
            if data["v"] != _VERSION:
                raise ValueError("version")
        except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id") from None
        # Same answer as a forged cursor: nothing tells a caller about other tenants.
        if not hmac.compare_digest(position.tenant.encode(), tenant.encode()):
            raise InvalidScrollId("scroll_id is not valid (altered, truncated or from elsewhere)", param="scroll_id")
        if now - position.issued_at > self._ttl:
            raise InvalidScrollId("scroll_id has expired; start a new scroll", param="scroll_id")
        return position

    @staticmethod
    def _sign(body: str, key: bytes) -> bytes:
        return hmac.new(key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii() or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
