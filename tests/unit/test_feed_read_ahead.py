"""The runs pull reads keep for the request that continues their cursor (``ReadAhead``):
given once, to the same tenant and position only, for a while, within a bound; a run read
ahead is waited for, and a failed or stopped one is no run."""

from __future__ import annotations

import asyncio

from cdr.api.errors import RateLimited
from cdr.api.feed import ReadAhead, Run
from cdr.store.feed import Change


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(count: int, first_offset: int = 0) -> Run:
    changes = [
        Change("t1", f"id-{n}", "sip", "NORMAL_CLEARING", 1, 1, 1, "", "101", "1", "2", "", 0, None, 0, "ANSWERED",
               0, 0, first_offset + n)
        for n in range(count)
    ]  # fmt: skip
    return Run(changes, more=True, fresh=False)


async def test_a_run_is_given_once_to_its_tenant_and_position_only() -> None:
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    kept = run(10, first_offset=5)
    ahead.keep("t1", {0: 4, 1: 7}, kept)
    assert await ahead.take("t2", {0: 4, 1: 7}) is None
    assert await ahead.take("t1", {0: 4}) is None
    assert await ahead.take("t1", {0: 4, 1: 8}) is None
    assert await ahead.take("t1", {1: 7, 0: 4}) is kept
    assert await ahead.take("t1", {0: 4, 1: 7}) is None
    assert ahead.held == 0


async def test_runs_expire_and_the_oldest_go_first_past_the_capacity() -> None:
    clock = Clock()
    ahead = ReadAhead(capacity=25, ttl_s=30, clock=clock)
    ahead.keep("t1", {0: 1}, run(10))
    clock.now += 10
    ahead.keep("t1", {0: 2}, run(10))
    ahead.keep("t1", {0: 3}, run(30))  # more than the whole capacity: not kept
    assert ahead.held == 20
    ahead.keep("t1", {0: 4}, run(10))  # 30 held: the oldest run goes
    assert ahead.held == 20
    assert await ahead.take("t1", {0: 1}) is None
    clock.now += 29
    taken = await ahead.take("t1", {0: 4})
    assert taken is not None and len(taken.changes) == 10
    clock.now += 2  # past 140, when the runs kept at 110 expire
    assert await ahead.take("t1", {0: 2}) is None
    assert ahead.held == 0
    ahead.keep("t1", {0: 5}, run(3))
    clock.now += 29.9
    assert await ahead.take("t1", {0: 5}) is not None


async def test_a_run_read_ahead_is_waited_for_and_a_failed_one_is_none() -> None:
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    release = asyncio.Event()
    ready = run(4)

    async def slow() -> Run:
        await release.wait()
        return ready

    async def refused() -> Run:
        raise RateLimited("too many reads")

    ahead.prefetch("t1", {0: 9}, 50, slow)
    ahead.prefetch("t1", {0: 9}, 50, refused)  # one read per position: this one is not made
    ahead.prefetch("t1", {1: 9}, 50, refused)
    assert ahead.held == 100
    taking = asyncio.create_task(ahead.take("t1", {0: 9}))
    await asyncio.sleep(0)  # a turn of the loop: the take starts, and waits
    assert not taking.done()
    release.set()
    assert await taking is ready
    assert await ahead.take("t1", {1: 9}) is None
    assert ahead.held == 0


async def test_closing_stops_the_reads_ahead() -> None:
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    never = asyncio.Event()

    async def hangs() -> Run:
        await never.wait()
        return run(1)

    ahead.prefetch("t1", {0: 1}, 10, hangs)
    ahead.prefetch("t1", {0: 2}, 200, hangs)  # more than the capacity: not read
    await asyncio.sleep(0)  # a turn of the loop: the read starts
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "feed-read-ahead"]
    assert len(tasks) == 1
    ahead.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks) and ahead.held == 0


async def test_an_empty_rest_leaves_the_run_read_ahead_for_its_position() -> None:
    """A page that ends exactly at the end of a run keeps an empty rest at the position the
    next run was read ahead for: that run must stay."""
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    ready = run(3)

    async def read() -> Run:
        return ready

    ahead.prefetch("t1", {0: 9}, 50, read)
    ahead.keep("t1", {0: 9}, Run([], more=True, fresh=False))
    assert await ahead.take("t1", {0: 9}) is ready
