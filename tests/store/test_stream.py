"""Store.stream_formatted on the embedded engine: a result handed over in bounded pieces
as it is read, a caller that leaves early or pauses frees the worker, a failure midway
is an error. One read worker and one bulk worker, so a worker that a stream kept would
block the next read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cdr.store import Store, StoreError

# ~16 MB of CSV for 1.5 M numbers: many pieces.
_BIG = "SELECT number, toString(number * 7) FROM numbers({n:UInt64})"


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('stream')}", database="cdr", read_workers=1, bulk_workers=1)
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
    # The only bulk worker is free again: the stream's read stopped.
    assert await asyncio.wait_for(store.query("SELECT 1", bulk=True), timeout=10) == [[1]]


async def test_a_stream_that_fails_midway_raises_a_store_error(store: Store) -> None:
    failing = "SELECT number, throwIf(number = 1400000, 'stop here') FROM numbers(1500000)"
    received = 0
    with pytest.raises(StoreError, match="stop here"):
        async for piece in store.stream_formatted(failing, {}, "CSV"):
            received += len(piece)
    assert received > 0  # pieces came before the failure
    assert await store.query("SELECT 2") == [[2]]


async def _drained(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


async def test_a_paused_caller_does_not_keep_the_only_bulk_worker(store: Store) -> None:
    """Streams run on the bulk workers (one here): a caller that stops taking pieces does
    not keep it (its read ends at the engine's pace), so the next stream is read meanwhile;
    the pieces wait for the paused caller, every one of them."""
    paused = store.stream_formatted(_BIG, {"n": 1_500_000}, "CSV")
    try:
        first = await anext(paused)
        small = await asyncio.wait_for(_drained(store.stream_formatted(_BIG, {"n": 10}, "CSV")), timeout=20)
        assert small.count(b"\n") == 10
        assert (first + await _drained(paused)).count(b"\n") == 1_500_000
    finally:
        await paused.aclose()
