"""Standard Webhooks signatures (standardwebhooks.com), made by the specification's reference
library (``standardwebhooks``: no dependencies), so that a receiver verifies them with any of
the published libraries."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def message_id(endpoint: str, versions: Iterable[tuple[str, str]]) -> str:
    """``webhook-id``: the same for the same batch to the same endpoint, so that a receiver
    recognises a retry (after a timeout, or a restart before the position was written)."""
    digest = hashlib.sha256(endpoint.encode())
    for id_, version in versions:
        digest.update(f"\n{id_} {version}".encode())
    return "msg_" + digest.hexdigest()[:32]


def signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` under each
    ``whsec_`` secret (two during a rotation), space-separated."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = body.decode()
    return " ".join(Webhook(secret).sign(msg_id, moment, text) for secret in secrets)
