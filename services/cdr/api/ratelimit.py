"""Per-tenant token buckets (per API replica): 429 with Retry-After when exhausted."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cdr.api.errors import RateLimited


class TenantRateLimiter:
    """Each tenant's bucket refills at its own rate up to its own burst (the tenant
    directory's, else the service's)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def check(self, tenant: str, per_second: float, burst: int) -> dict[str, str]:
        """Take one token for the tenant, or raise RateLimited saying when to retry.
        Returns the state as ``RateLimit-*`` headers (IETF draft names); none when off."""
        if per_second <= 0:
            return {}
        now = self._clock()
        tokens, at = self._buckets.get(tenant, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * per_second)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / per_second)
            self._buckets[tenant] = (tokens, now)
            raise RateLimited(
                f"too many requests for this tenant; retry in {wait} s",
                headers={"Retry-After": str(wait), **_state(tokens, per_second, burst)},
            )
        self._buckets[tenant] = (tokens - 1, now)
        return _state(tokens - 1, per_second, burst)


def _state(tokens: float, per_second: float, burst: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(burst),
        "RateLimit-Remaining": str(max(int(tokens), 0)),
        "RateLimit-Reset": str(math.ceil((burst - tokens) / per_second)),
    }


class Slots:
    """Counted holdings per key (a tenant, or one key for the whole replica) up to a limit:
    ``claim`` takes ``n`` at once or raises ``refusal``, and returns their release
    (idempotent: a stream's release may run from more than one place)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken: dict[str, int] = {}

    def taken(self, key: str) -> int:
        return self._taken.get(key, 0)

    def claim(self, key: str, refusal: RateLimited, n: int = 1) -> Callable[[], None]:
        if n == 0:
            # Nothing held (a route that claims its reads itself). Recording a 0 made two
            # such requests of one tenant share an entry the first release deleted.
            return _nothing
        taken = self._taken.get(key, 0)
        if taken + n > self.limit:
            raise refusal
        self._taken[key] = taken + n
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._taken[key] - n
            if left:
                self._taken[key] = left
            else:
                del self._taken[key]

        return release


def _nothing() -> None:
    return None
