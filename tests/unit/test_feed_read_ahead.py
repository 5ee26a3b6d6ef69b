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


async def test_runs_expire_and_what_does_not_fit_is_not_kept() -> None:
    clock = Clock()
    held: list[int] = []
    ahead = ReadAhead(capacity=25, ttl_s=30, clock=clock, on_change=held.append)
    ahead.keep("t1", {0: 1}, run(10))
    clock.now += 10
    ahead.keep("t1", {0: 2}, run(10))
    ahead.keep("t1", {0: 3}, run(10))  # no room: not kept, and nothing held is pushed out
    assert ahead.held == 20 and held[-1] == 20
    assert await ahead.take("t1", {0: 3}) is None
    clock.now += 21  # past 130, when the run kept at 100 expires
    assert await ahead.take("t1", {0: 1}) is None
    assert ahead.held == 10 and held[-1] == 10
    ahead.keep("t1", {0: 3}, run(10))  # room again
    taken = await ahead.take("t1", {0: 3})
    assert taken is not None and len(taken.changes) == 10
    clock.now += 10  # past 140: the run kept at 110 expires
    assert await ahead.take("t1", {0: 2}) is None
    assert ahead.held == 0 and held[-1] == 0
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


async def test_closing_stops_the_reads_ahead_and_waits_for_them() -> None:
    ahead = ReadAhead(capacity=100, ttl_s=30, clock=Clock())
    never = asyncio.Event()

    async def hangs() -> Run:
        await never.wait()
        return run(1)

    ahead.prefetch("t1", {0: 1}, 60, hangs)
    ahead.prefetch("t1", {0: 2}, 60, hangs)  # no room left for it: not read
    ahead.keep("t1", {0: 3}, run(50))  # nor kept
    assert ahead.held == 60
    await asyncio.sleep(0)  # a turn of the loop: the read starts
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "feed-read-ahead"]
    assert len(tasks) == 1
    await ahead.close()
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


async def test_at_most_max_reads_are_read_ahead_at_once() -> None:
    ahead = ReadAhead(capacity=1_000, ttl_s=30, clock=Clock(), max_reads=2)
    release = asyncio.Event()

    async def slow() -> Run:
        await release.wait()
        return run(1)

    for offset in range(3):
        ahead.prefetch("t1", {0: offset}, 10, slow)
    assert ahead.held == 20  # the third was not read
    release.set()
    assert await ahead.take("t1", {0: 0}) is not None
    ahead.prefetch("t1", {0: 2}, 10, slow)  # one read ended: room for another
    assert await ahead.take("t1", {0: 2}) is not None
    await ahead.close()
