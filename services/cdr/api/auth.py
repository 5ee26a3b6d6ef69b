"""Bearer tokens -> tenant. Only SHA-256 digests are configured; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from cdr.api.errors import Unauthorized


class TokenAuthority:
    def __init__(self, digests: dict[str, str]) -> None:
        # digest (hex) -> tenant
        self._entries = [(bytes.fromhex(d), tenant) for d, tenant in digests.items()]

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization: Bearer <token>`` header; Unauthorized otherwise."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        # Every entry is compared, so the time taken says nothing about which matched.
        for known, tenant in self._entries:
            if hmac.compare_digest(known, digest):
                found = tenant
        if found is None:
            raise Unauthorized("unknown token")
        return found
