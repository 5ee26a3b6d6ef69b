from __future__ import annotations

import pytest

from cdr.api.errors import RateLimited
from cdr.api.ratelimit import TenantRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_429_with_retry_after_then_refill() -> None:
    clock = Clock()
    limiter = TenantRateLimiter(per_second=2, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    limiter.check("b")  # tenants are limited apart
    clock.now += 0.5
    limiter.check("a")


def test_off_by_default() -> None:
    limiter = TenantRateLimiter(per_second=0, burst=1)
    for _ in range(1000):
        limiter.check("a")
