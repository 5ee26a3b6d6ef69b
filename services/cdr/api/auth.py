"""Bearer tokens -> tenant. Only SHA-256 digests are configured; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cdr.api.errors import Unauthorized
from cdr.api.tenants import Directory, TenantProfile
from cdr.settings import SettingsError
from cdr.tenants import FileStamp, file_stamp

log = logging.getLogger(__name__)

_RECHECK_S = 2.0


def token_digest(token: str) -> str:
    """The digest configuration holds for a bearer token (lower-case SHA-256 hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenAuthority:
    """``load()`` gives the tenant directory (digest -> tenant, and each tenant's profile).
    With ``watched`` files (mounted Secrets), a change to one is picked up within seconds,
    without a restart: a revoked token stops working, a new one starts, a tenant's new
    timezone or rate limit applies. A file that no longer parses keeps the previous
    directory (and says so in the log) rather than locking every tenant out."""

    def __init__(
        self,
        load: Callable[[], Directory],
        watched: Sequence[Path] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._watched = tuple(watched)
        self._clock = clock
        self._checked_at = clock()
        self._stamp = self._file_stamp()
        self._directory = load()
        self._entries = list(self._directory.digests.items())  # (sha256 hex, tenant)

    def _file_stamp(self) -> tuple[FileStamp, ...]:
        return tuple(file_stamp(path) for path in self._watched)

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if not self._watched or now - self._checked_at < _RECHECK_S:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            directory = self._load()
        except SettingsError as exc:
            log.error("token file changed but cannot be used; keeping the previous tokens", extra={"error": str(exc)})
            return
        self._directory = directory
        self._entries = list(directory.digests.items())
        log.info("token file reloaded", extra={"tokens": len(self._entries), "tenants": self.tenants})

    def profile(self, tenant: str) -> TenantProfile:
        """The tenant's timezone, phone region and rate limit (the service's defaults unless
        the tenant directory says otherwise)."""
        return self._directory.profile(tenant)

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
