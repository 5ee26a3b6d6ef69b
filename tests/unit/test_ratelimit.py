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


def test_slots_take_several_at_once_up_to_the_limit_and_give_them_back_once() -> None:
    from cdr.api.ratelimit import Slots

    slots = Slots(4)
    refusal = RateLimited("full", headers={"Retry-After": "1"})
    page = slots.claim("a", refusal, 2)
    slots.claim("a", refusal, 1)
    with pytest.raises(RateLimited):
        slots.claim("a", refusal, 2)  # 3 held: a page's two reads do not fit
    slots.claim("b", refusal, 4)  # tenants are counted apart
    page()
    page()  # idempotent: a stream's release may run twice
    assert slots.taken("a") == 1
    slots.claim("a", refusal, 3)
    assert slots.taken("a") == 4
