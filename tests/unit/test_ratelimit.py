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
    limiter = TenantRateLimiter(clock=clock)
    for _ in range(3):
        limiter.check("a", 2, 3)
    with pytest.raises(RateLimited) as info:
        limiter.check("a", 2, 3)
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    limiter.check("b", 2, 3)  # tenants are limited apart
    clock.now += 0.5
    limiter.check("a", 2, 3)


def test_each_tenant_has_its_own_rate_and_burst() -> None:
    limiter = TenantRateLimiter(clock=Clock())
    for _ in range(10):
        assert limiter.check("big", 5, 10)["RateLimit-Limit"] == "10"
    with pytest.raises(RateLimited):
        limiter.check("big", 5, 10)
    limiter.check("small", 1, 1)
    with pytest.raises(RateLimited):
        limiter.check("small", 1, 1)


def test_off_by_default() -> None:
    limiter = TenantRateLimiter()
    for _ in range(1000):
        assert limiter.check("a", 0, 1) == {}
