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

    def check(self, tenant: str) -> None:
        """Take one token for the tenant, or raise RateLimited saying when to retry."""
        if self._rate <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(tenant, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self._rate)
            self._buckets[tenant] = (tokens, now)
            raise RateLimited(
                f"too many requests for this tenant; retry in {wait} s", headers={"Retry-After": str(wait)}
            )
        self._buckets[tenant] = (tokens - 1, now)
