"""The batch insert into ClickHouse, retried with back-off while ClickHouse is unavailable.

Only transient failures are retried (``StoreUnavailable``: see ``cdr.store.errors``).
Any other error -- a bad statement, a table whose columns do not match -- would fail
the same way forever, so it is raised and halts ingest with that error."""

from __future__ import annotations

import asyncio
import logging
import time

import pyarrow as pa

from cdr.ingest.retry import Backoff
from cdr.metrics import Metrics
from cdr.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


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
        self._backoff = Backoff(initial_backoff_s, max_backoff_s, stopping)
        self._table = table
        self.healthy = True

    async def write(self, rows: pa.Table) -> None:
        async def insert() -> None:
            started = time.perf_counter()
            await self._store.insert_arrow(self._table, rows)
            self._metrics.insert_seconds.observe(time.perf_counter() - started)

        def failed(attempt: int, exc: BaseException, retry_in_s: float) -> None:
            self._metrics.insert_failures.inc()
            self.healthy = False
            log.error(
                "insert failed, retrying",
                extra={"rows": rows.num_rows, "attempt": attempt, "retry_in_s": retry_in_s, "error": str(exc)[:500]},
            )

        attempts = await self._backoff.retry(
            insert, transient=(StoreUnavailable,), on_failure=failed, what=f"an insert of {rows.num_rows} rows"
        )
        if attempts > 1:
            log.info("insert succeeded after retries", extra={"rows": rows.num_rows, "attempts": attempts})
        self.healthy = True
