"""The runs pull reads keep for the request that continues their cursor (``ReadAhead``):
given once, to the same tenant and position only, for a while, within a bound."""

from __future__ import annotations

from cdr.api.feed import ReadAhead
from cdr.store.feed import Change


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(count: int, first_offset: int = 0) -> list[Change]:
    return [
        Change("t1", f"id-{n}", "sip", "NORMAL_CLEARING", 1, 1, 1, "", "101", "1", "2", "", 0, None, 0, "ANSWERED",
               0, 0, first_offset + n)
        for n in range(count)
    ]  # fmt: skip


def test_a_run_is_given_once_to_its_tenant_and_position_only() -> None:
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    kept = run(10, first_offset=5)
    ahead.keep("t1", {0: 4, 1: 7}, kept)
    assert ahead.take("t2", {0: 4, 1: 7}) == []
    assert ahead.take("t1", {0: 4}) == []
    assert ahead.take("t1", {0: 4, 1: 8}) == []
    assert ahead.take("t1", {1: 7, 0: 4}) == kept
    assert ahead.take("t1", {0: 4, 1: 7}) == []
    assert ahead.held == 0


def test_runs_expire_and_the_oldest_go_first_past_the_capacity() -> None:
    clock = Clock()
    ahead = ReadAhead(capacity=25, ttl_s=30, clock=clock)
    ahead.keep("t1", {0: 1}, run(10))
    clock.now += 10
    ahead.keep("t1", {0: 2}, run(10))
    ahead.keep("t1", {0: 3}, run(30))  # more than the whole capacity: not kept
    assert ahead.held == 20
    ahead.keep("t1", {0: 4}, run(10))  # 30 held: the oldest run goes
    assert ahead.held == 20
    assert ahead.take("t1", {0: 1}) == []
    clock.now += 29
    assert len(ahead.take("t1", {0: 4})) == 10
    clock.now += 2  # past 140, when the runs kept at 110 expire
    assert ahead.take("t1", {0: 2}) == []
    assert ahead.held == 0
    ahead.keep("t1", {0: 5}, run(3))
    clock.now += 29.9
    assert len(ahead.take("t1", {0: 5})) == 3
