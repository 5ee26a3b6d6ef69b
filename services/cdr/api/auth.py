"""Bearer tokens -> tenant. Only SHA-256 digests are configured; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cdr.api.errors import Unauthorized
from cdr.settings import SettingsError

log = logging.getLogger(__name__)

_RECHECK_S = 2.0


def token_digest(token: str) -> str:
    """The digest configuration holds for a bearer token (lower-case SHA-256 hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenAuthority:
    """``load()`` gives digest (hex) -> tenant. With a ``watched`` file (a mounted
    Secret), a change to it is picked up within seconds, without a restart: a revoked
    token stops working, a new one starts. A file that no longer parses keeps the
    previous tokens (and says so in the log) rather than locking every tenant out."""

    def __init__(
        self,
        load: Callable[[], dict[str, str]],
        watched: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._watched = watched
        self._clock = clock
        self._checked_at = clock()
        self._stamp = self._file_stamp()
        self._entries = list(load().items())  # (sha256 hex, tenant)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._watched is None:
            return None
        try:
            st = os.stat(self._watched)  # follows the symlink a Secret volume swaps
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if self._watched is None or now - self._checked_at < _RECHECK_S:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = list(self._load().items())
        except SettingsError as exc:
            log.error("token file changed but cannot be used; keeping the previous tokens", extra={"error": str(exc)})
            return
        self._entries = entries
        log.info("token file reloaded", extra={"tokens": len(entries), "tenants": self.tenants})

    @property
    def tenants(self) -> int:
        """How many tenants have at least one token."""
        return len({tenant for _, tenant in self._entries})

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization: Bearer <token>`` header; Unauthorized otherwise."""
        self._reload_if_changed()
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        digest = token_digest(token)
        found: str | None = None
        # Every entry is compared, so the time taken says nothing about which matched.
        for known, tenant in self._entries:
            if hmac.compare_digest(known, digest):
                found = tenant
        if found is None:
            raise Unauthorized("unknown token")
        return found
