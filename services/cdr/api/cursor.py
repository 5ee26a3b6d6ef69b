"""Scroll cursors: encrypted, stateless keyset positions. Pure: no I/O.

A cursor holds the tenant, the normalized filters, the order, the batch size, the
last returned ``(time_started, id)`` and when it was issued, sealed with AES-256-GCM
under a key derived (HKDF-SHA256) from the cursor secret: nobody can alter it, and
nobody who sees a URL or a proxy log can read the filters (phone numbers) in it. Any API
replica with the same secret can continue the scroll.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cdr.api.errors import InvalidParameter, InvalidScrollId

_VERSION = 2
_AAD = b"cdr scroll cursor v2"
# Change-feed cursors are sealed with their own associated data (and key, derived with
# it): a scroll_id does not open as a feed cursor, nor a feed cursor as a scroll_id.
_FEED_VERSION = 1
_FEED_AAD = b"cdr change feed cursor v1"
_NONCE = 12


def _cipher(secret: bytes, purpose: bytes = _AAD) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)
    return AESGCM(key)


@dataclass(frozen=True)
class FeedPosition:
    """Where a change-feed reader is: the last offset delivered per source partition."""

    tenant: str
    filters: dict[str, Any]
    offsets: dict[int, int]
    issued_at: int
    # The API replica that issued it ("": unknown, e.g. a cursor of an older release): the
    # one that may hold what it read ahead for the cursor (cdr.api.feed.ReadAhead).
    issuer: str = ""


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
    """Seals with ``secret``; also opens cursors sealed with ``previous`` (the key being
    rotated out), so a key rotation does not break the scrolls in progress."""

    def __init__(self, secret: bytes, ttl_s: int, previous: bytes | None = None, feed_ttl_s: int = 7 * 86_400) -> None:
        self._current = _cipher(secret)
        self._ciphers = (self._current,) if previous is None else (self._current, _cipher(previous))
        self._ttl = ttl_s
        self._feed_current = _cipher(secret, _FEED_AAD)
        self._feed_ciphers = (
            (self._feed_current,) if previous is None else (self._feed_current, _cipher(previous, _FEED_AAD))
        )
        self._feed_ttl = feed_ttl_s

    def encode_feed(self, position: FeedPosition) -> str:
        payload = orjson.dumps(
            {
                "v": _FEED_VERSION,
                "t": position.tenant,
                "f": position.filters,
                "k": sorted([p, o] for p, o in position.offsets.items()),
                "i": position.issued_at,
                "r": position.issuer,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        nonce = os.urandom(_NONCE)
        return _b64(nonce + self._feed_current.encrypt(nonce, payload, _FEED_AAD))

    def decode_feed(self, token: str, *, tenant: str, now: int) -> FeedPosition:
        """Verify and open a feed cursor; any problem is a 400 naming ``cursor``. It stays
        valid for the feed's retention (CDR_FEED_RETENTION_DAYS) after it was issued."""

        def bad(why: str) -> InvalidParameter:
            return InvalidParameter(f"cursor {why}", param="cursor")

        try:
            sealed = _unb64(token)
        except ValueError:
            raise bad("is malformed") from None
        if _b64(sealed) != token or len(sealed) <= _NONCE:
            raise bad("is malformed")
        payload = None
        for cipher in self._feed_ciphers:
            try:
                payload = cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], _FEED_AAD)
            except InvalidTag:
                continue
        if payload is None:
            raise bad("is not valid (altered, truncated, from elsewhere, or not a change-feed cursor)")
        try:
            data = orjson.loads(payload)
            position = FeedPosition(
                tenant=str(data["t"]),
                filters=dict(data["f"]),
                offsets={int(p): int(o) for p, o in data["k"]},
                issued_at=int(data["i"]),
                issuer=str(data.get("r", "")),
            )
            if data["v"] != _FEED_VERSION:
                raise ValueError("version")
        except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
            raise bad("is malformed") from None
        if not hmac.compare_digest(position.tenant.encode(), tenant.encode()):
            raise bad("is not valid (altered, truncated, from elsewhere, or not a change-feed cursor)")
        if now - position.issued_at > self._feed_ttl:
            raise bad("is older than the feed's retention; start again with since")
        return position

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
        nonce = os.urandom(_NONCE)
        return _b64(nonce + self._current.encrypt(nonce, payload, _AAD))

    def decode(self, token: str, *, tenant: str, now: int) -> Position:
        """Verify and open a cursor; any problem is an InvalidScrollId (400)."""
        if len(token) > 4096:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id")
        try:
            sealed = _unb64(token)
        except ValueError:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id") from None
        # Exactly the encoding we issue: base64 tolerates padding, other alphabets and
        # unused trailing bits, so several strings would otherwise open one cursor.
        if _b64(sealed) != token or len(sealed) <= _NONCE:
            raise InvalidScrollId("scroll_id is malformed", param="scroll_id")
        payload = None
        for cipher in self._ciphers:
            try:
                payload = cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], _AAD)
            except InvalidTag:
                continue
        if payload is None:
            raise InvalidScrollId("scroll_id is not valid (altered, truncated or from elsewhere)", param="scroll_id")
        try:
            data = orjson.loads(payload)
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii() or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
