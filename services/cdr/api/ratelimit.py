"""Per-tenant token buckets (per API replica): 429 with Retry-After when exhausted."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cdr.api.errors import RateLimited


class TenantRateLimiter:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def check(self, tenant: str) -> dict[str, str]:
        """Take one token for the tenant, or raise RateLimited saying when to retry.
        Returns the state as ``RateLimit-*`` headers (IETF draft names); none when off."""
        if self._rate <= 0:
            return {}
        now = self._clock()
        tokens, at = self._buckets.get(tenant, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self._rate)
            self._buckets[tenant] = (tokens, now)
            raise RateLimited(
                f"too many requests for this tenant; retry in {wait} s",
                headers={"Retry-After": str(wait), **self._state(tokens)},
            )
        self._buckets[tenant] = (tokens - 1, now)
        return self._state(tokens - 1)

    def _state(self, tokens: float) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(int(self._burst)),
            "RateLimit-Remaining": str(max(int(tokens), 0)),
            "RateLimit-Reset": str(math.ceil((self._burst - tokens) / self._rate)),
        }
