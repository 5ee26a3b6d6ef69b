"""A batch's verdicts, computed beside the consumer: on a worker process, or a thread.

Validation is pure Python and C extensions holding the GIL (~10 µs an event); run in the
consumer's process it competes with fetching (aiokafka builds a Python object per
record), so one interpreter tops out at a fraction of the raw fetch rate. On a worker
process it runs on the other core while the consumer fetches the next batch. The batch
crosses as its raw values (one pickled list of bytes) and comes back as an Arrow table
(pickled as its buffers), both a few milliseconds for 20,000 events.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from multiprocessing.process import BaseProcess
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from cdr.ingest.lean import LeanParser
from cdr.ingest.processor import Invalid, to_table, validate
from cdr.model.event import CallEnded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdicts:
    """``rows``: the valid events as ``cdr`` columns, in their order in the batch;
    ``invalid``: why each refused one (by its index in the batch) is refused; how many
    events the fast path and the model each decided."""

    rows: pa.Table
    invalid: dict[int, Invalid] = field(default_factory=dict)
    lean: int = 0
    model: int = 0


@cache
def _parser(zone: ZoneInfo) -> LeanParser:
    # One per zone and process: building it walks the zone's offsets back from 2100.
    return LeanParser(zone)


def validate_batch(values: Sequence[bytes], zone: ZoneInfo, latest_emitted_at: datetime) -> Verdicts:
    """The lean fast path over the whole batch; the model for the messages it leaves
    (invalid ones, and valid ones in shapes it does not take)."""
    lean = _parser(zone).parse(list(values), latest_emitted_at)
    invalid: dict[int, Invalid] = {}
    events: list[CallEnded] = []
    positions: list[int] = []
    for i in lean.rest:
        outcome = validate(values[i], zone, latest_emitted_at)
        if isinstance(outcome, Invalid):
            invalid[i] = outcome
        else:
            events.append(outcome)
            positions.append(i)
    rows = lean.rows
    if events:
        rows = pa.concat_tables([rows, to_table(events, positions)])
        rows = rows.take(pc.sort_indices(rows.column("n")))
    return Verdicts(rows.drop_columns(["n"]), invalid, lean.rows.num_rows, len(lean.rest))


def _worker_started() -> None:
    """In each worker, first: the consumer's process alone decides when it stops. A Ctrl-C
    reaches the whole process group, and the consumer closes the pool; a consumer killed
    outright (SIGKILL, OOM) cannot, so the worker exits when it sees its parent gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with(parent: BaseProcess) -> None:
    parent.join()
    os._exit(0)


def _warm(zone: ZoneInfo) -> None:
    """A new worker's first task: imports done and the parser built before a batch waits."""
    _parser(zone)


class Validator:
    """Runs ``validate_batch`` on ``processes`` worker processes (0: a thread of this one).

    A worker that dies (killed, out of memory) takes no batch with it: the batch is
    validated here instead, and the next one goes to a new worker."""

    def __init__(self, zone: ZoneInfo, processes: int) -> None:
        self._zone = zone
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None
        # Batches validated at once: each worker's, and one more queued so that a worker
        # never waits for the consumer to hand over the next; on a thread, one (two threads
        # would only share the GIL).
        self.depth = processes + 1 if processes else 1

    async def start(self) -> None:
        """Start the workers and wait until they can take a batch."""
        if self._processes:
            self._pool = pool = self._new_pool()
            loop = asyncio.get_running_loop()
            # Submitted together: the pool starts a worker for each task no idle one takes.
            await asyncio.gather(*(loop.run_in_executor(pool, _warm, self._zone) for _ in range(self._processes)))

    def _new_pool(self) -> ProcessPoolExecutor:
        # Spawned, never forked: this process runs threads (the store's, aiokafka's
        # resolver), and a fork copies their locks in whatever state they are.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self._processes, mp_context=context, initializer=_worker_started)

    async def __call__(self, values: Sequence[bytes], latest_emitted_at: datetime) -> Verdicts:
        pool = self._pool
        if pool is not None:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(pool, validate_batch, values, self._zone, latest_emitted_at)
            except BrokenProcessPool:
                log.error("a validation worker died; this batch is validated in the consumer, the next on a new worker")
                if self._pool is pool:  # the first of the batches it held to fail replaces it
                    self._pool = self._new_pool()
                    pool.shutdown(wait=False, cancel_futures=True)
        return await asyncio.to_thread(validate_batch, values, self._zone, latest_emitted_at)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
