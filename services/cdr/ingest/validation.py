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
from multiprocessing.process import BaseProcess
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from cdr.ingest.lean import LeanParser
from cdr.ingest.processor import Invalid, to_table, validate
from cdr.model.event import MAX_CALL_S, CallEnded
from cdr.phones import with_canonical_numbers
from cdr.tenants import TenantZones, ZoneDirectory

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


@dataclass
class _Parsers:
    """The parser of the zones and limit last used (a process serves one stream of batches)."""

    key: tuple[TenantZones, int] | None = None
    parser: LeanParser | None = None

    def of(self, zones: TenantZones, max_call_s: int) -> LeanParser:
        if self.parser is None or self.key != (zones, max_call_s):
            self.parser = LeanParser(zones.default, zones.by_tenant, max_call_s)
            self.key = (zones, max_call_s)
        return self.parser


_PARSERS = _Parsers()


def validate_batch(
    values: Sequence[bytes], zones: TenantZones, latest_emitted_at: datetime, max_call_s: int = MAX_CALL_S
) -> Verdicts:
    """The lean fast path over the whole batch; the model for the messages it leaves
    (invalid ones, and valid ones in shapes it does not take). Then each number's
    canonical form (cdr.phones), here on the worker, once per batch for both paths."""
    lean = _PARSERS.of(zones, max_call_s).parse(list(values), latest_emitted_at)
    invalid: dict[int, Invalid] = {}
    events: list[CallEnded] = []
    positions: list[int] = []
    for i in lean.rest:
        outcome = validate(
            values[i], zones.default, latest_emitted_at, tenant_zones=zones.by_tenant, max_call_s=max_call_s
        )
        if isinstance(outcome, Invalid):
            invalid[i] = outcome
        else:
            events.append(outcome)
            positions.append(i)
    rows = lean.rows
    if events:
        rows = pa.concat_tables([rows, to_table(events, positions)])
        rows = rows.take(pc.sort_indices(rows.column("n")))
    rows = with_canonical_numbers(rows.drop_columns(["n"]), zones.phones)
    return Verdicts(rows, invalid, lean.rows.num_rows, len(lean.rest))


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


class ZonesUnknown(Exception):
    """A worker was sent the version of tenant zones it does not hold: send them whole."""


# In a worker: the tenant zones last sent to it. Only a change crosses with a batch: the
# consumer sends their version, and the zones themselves to a worker that answers
# ZonesUnknown (once per worker and change).
_held: TenantZones | None = None


def _hold(zones: TenantZones) -> None:
    global _held
    _held = zones


def _validate_in_worker(
    values: Sequence[bytes], zones: TenantZones | int, latest_emitted_at: datetime, max_call_s: int
) -> Verdicts:
    if isinstance(zones, TenantZones):
        _hold(zones)
    elif _held is None or _held.version != zones:
        raise ZonesUnknown(zones)
    assert _held is not None
    return validate_batch(values, _held, latest_emitted_at, max_call_s)


def _warm(zones: TenantZones, max_call_s: int) -> None:
    """A new worker's first task: imports done, zones held and the parser built before a batch waits."""
    _hold(zones)
    _PARSERS.of(zones, max_call_s)


class Validator:
    """Runs ``validate_batch`` on ``processes`` worker processes (0: a thread of this one).

    A worker that dies (killed, out of memory) takes no batch with it: the batch is
    validated here instead, and the next one goes to a new worker. Naive times are read
    in ``zones``: one zone, or the tenants' zones of a directory (a change to it applies
    from the next batch)."""

    def __init__(self, zones: ZoneInfo | ZoneDirectory, processes: int, max_call_s: int = MAX_CALL_S) -> None:
        self._zones = zones if isinstance(zones, ZoneDirectory) else ZoneDirectory(zones)
        self._max_call_s = max_call_s
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
            zones = self._zones.current()
            warm = (loop.run_in_executor(pool, _warm, zones, self._max_call_s) for _ in range(self._processes))
            await asyncio.gather(*warm)

    def _new_pool(self) -> ProcessPoolExecutor:
        # Spawned, never forked: this process runs threads (the store's, aiokafka's
        # resolver), and a fork copies their locks in whatever state they are.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self._processes, mp_context=context, initializer=_worker_started)

    async def __call__(self, values: Sequence[bytes], latest_emitted_at: datetime) -> Verdicts:
        zones = self._zones.current()
        limit = self._max_call_s
        pool = self._pool
        if pool is not None:
            loop = asyncio.get_running_loop()
            try:
                try:
                    return await loop.run_in_executor(
                        pool, _validate_in_worker, values, zones.version, latest_emitted_at, limit
                    )
                except ZonesUnknown:
                    return await loop.run_in_executor(
                        pool, _validate_in_worker, values, zones, latest_emitted_at, limit
                    )
            except BrokenProcessPool:
                log.error("a validation worker died; this batch is validated in the consumer, the next on a new worker")
                if self._pool is pool:  # the first of the batches it held to fail replaces it
                    self._pool = self._new_pool()
                    pool.shutdown(wait=False, cancel_futures=True)
        return await asyncio.to_thread(validate_batch, values, zones, latest_emitted_at, limit)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
