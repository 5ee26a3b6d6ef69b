"""The batch insert into ClickHouse, retried with back-off while ClickHouse is unavailable.

Only transient failures are retried (``StoreUnavailable``: see ``cdr.store.errors``).
Any other error -- a bad statement, a table whose columns do not match -- would fail
the same way forever, so it is raised and halts ingest with that error."""

from __future__ import annotations

import asyncio
import logging
import time

import pyarrow as pa

from cdr.metrics import Metrics
from cdr.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


class Abandoned(Exception):
    """Shutdown was asked for while the batch was not yet written; it was not committed."""


class BatchWriter:
    """Writes a batch in one insert; retries a transient failure until the batch is stored
    or shutdown is asked for.

    While retrying, the pipeline takes no further batch from Kafka (one more may wait,
    fetched): memory stays bounded, and nothing is committed.
    """

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        stopping: asyncio.Event,
        *,
        initial_backoff_s: float,
        max_backoff_s: float,
        table: str = "cdr",
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._stopping = stopping
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self._table = table
        self.healthy = True

    async def write(self, rows: pa.Table) -> None:
        backoff = self._initial
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                await self._store.insert_arrow(self._table, rows)
            except StoreUnavailable as exc:
                self._metrics.insert_failures.inc()
                self.healthy = False
                log.error(
                    "insert failed, retrying",
                    extra={"rows": rows.num_rows, "attempt": attempt, "retry_in_s": backoff, "error": str(exc)[:500]},
                )
                if await stop_requested_within(self._stopping, backoff):
                    raise Abandoned(f"shutdown while retrying an insert of {rows.num_rows} rows") from exc
                backoff = min(backoff * 2, self._max)
                continue
            self._metrics.insert_seconds.observe(time.perf_counter() - started)
            if attempt > 1:
                log.info("insert succeeded after retries", extra={"rows": rows.num_rows, "attempts": attempt})
            self.healthy = True
            return


async def stop_requested_within(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless a stop is asked for first; True if it was."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
