"""Store.stream_formatted on the embedded engine: a result handed over in bounded pieces
as it is read, a caller that leaves early or pauses frees the worker, a failure midway
is an error. One read worker, so a worker that a stream kept would block the next read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cdr.store import Store, StoreError

# ~16 MB of CSV for 1.5 M numbers: many pieces.
_BIG = "SELECT number, toString(number * 7) FROM numbers({n:UInt64})"


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('stream')}", database="cdr", read_workers=1)
    yield store
    await store.close()


async def test_a_streamed_result_comes_whole_in_bounded_pieces(store: Store) -> None:
    pieces = [piece async for piece in store.stream_formatted(_BIG, {"n": 1_500_000}, "CSV")]
    assert len(pieces) > 4 and max(len(p) for p in pieces) <= 1 << 20
    lines = b"".join(pieces).splitlines()
    assert len(lines) == 1_500_000 and lines[-1] == b'1499999,"10499993"'


async def test_a_stream_left_early_frees_its_worker(store: Store) -> None:
    stream = store.stream_formatted(_BIG, {"n": 5_000_000}, "CSV")
    assert await anext(stream)
    await stream.aclose()
    # The only read worker is free again: the stream's read stopped.
    assert await asyncio.wait_for(store.query("SELECT 1"), timeout=10) == [[1]]


async def test_a_stream_that_fails_midway_raises_a_store_error(store: Store) -> None:
    failing = "SELECT number, throwIf(number = 1400000, 'stop here') FROM numbers(1500000)"
    received = 0
    with pytest.raises(StoreError, match="stop here"):
        async for piece in store.stream_formatted(failing, {}, "CSV"):
            received += len(piece)
    assert received > 0  # pieces came before the failure
    assert await store.query("SELECT 2") == [[2]]


async def test_a_caller_that_stops_taking_pieces_does_not_keep_the_reader(store: Store) -> None:
    stream = store.stream_formatted(_BIG, {"n": 1_500_000}, "CSV")
    try:
        assert await anext(stream)
        # The caller pauses here; the only read worker finishes the read all the same.
        assert await asyncio.wait_for(store.query("SELECT 3"), timeout=20) == [[3]]
        rest = [piece async for piece in stream]
        assert len(rest) > 4
    finally:
        await stream.aclose()


async def _drained(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


async def test_a_gate_is_held_while_the_engine_reads_not_while_the_caller_takes_pieces(store: Store) -> None:
    """A stream's gate bounds the reads in the engine: taken before its read, given back
    when the read ends although the caller has not taken its pieces (a slow client), or
    when the caller leaves early."""
    gate = asyncio.Semaphore(1)
    paused = store.stream_formatted(_BIG, {"n": 1_500_000}, "CSV", gate=gate)
    try:
        first = await anext(paused)
        assert gate.locked()  # the read is under way
        # The caller pauses; its read ends all the same and the next gated read gets the gate.
        small = await asyncio.wait_for(_drained(store.stream_formatted(_BIG, {"n": 10}, "CSV", gate=gate)), 20)
        assert small.count(b"\n") == 10
        assert (first + await _drained(paused)).count(b"\n") == 1_500_000  # every piece was kept
    finally:
        await paused.aclose()
    assert not gate.locked()

    left = store.stream_formatted(_BIG, {"n": 5_000_000}, "CSV", gate=gate)
    assert await anext(left)
    await left.aclose()
    await asyncio.wait_for(gate.acquire(), timeout=20)  # given back: the read stopped
