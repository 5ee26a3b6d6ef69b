"""The batch insert into ClickHouse, retried with back-off while ClickHouse is unavailable.

Only transient failures are retried (``StoreUnavailable``: see ``cdr.store.errors``).
A value the server refuses (``StoreDataError``: a CHECK constraint, a number out of
range) is about some rows: the batch is split in halves, recursively, until the rows
it refuses are alone; they are handed back to be dead-lettered and every other row is
stored. Any other error -- a bad statement, a table whose columns do not match -- would
fail the same way forever, so it is raised and halts ingest with that error."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import pyarrow as pa

from cdr.ingest.corrections import Corrections
from cdr.ingest.retry import Backoff
from cdr.metrics import Metrics
from cdr.store import Store, StoreError, StoreUnavailable
from cdr.store.errors import Code, StoreDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """A row ClickHouse refused alone: its index in the batch's rows, and the server's why."""

    row: int
    code: int | None
    reason: str


class TooManyRefused(StoreError):
    """ClickHouse refused more of a batch's rows than a bad row here and there: the cause is
    systematic (a constraint or a column type no event meets), not the data of a few events."""


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
        corrections: Corrections | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._backoff = Backoff(initial_backoff_s, max_backoff_s, stopping)
        self._table = table
        # Resolved on every attempt: the lookup reads what the attempt before stored.
        self._corrections = corrections
        self.healthy = True

    async def write(self, rows: pa.Table, *, max_refused: int) -> list[Refused]:
        """Store ``rows`` but those ClickHouse refuses for their values; returns those, in
        order. More than ``max_refused`` of them raise TooManyRefused (the search stops
        there: isolating every row of a batch costs two inserts a row).

        The halves are separate inserts, not one transaction: a half stored before a later
        one fails is stored again when the batch is re-read (after a halt or a stop), and
        the table's version key collapses the copies. Inserts carry no deduplication token,
        so a half is never taken for a copy of an earlier insert and silently dropped."""
        try:
            await self._insert(rows)
        except StoreDataError as exc:
            log.warning(
                "ClickHouse refused a value in the batch; isolating the rows it refuses",
                extra={"rows": rows.num_rows, "code": exc.code, "error": str(exc)[:500]},
            )
            refused: list[Refused] = []
            await self._isolate(rows, 0, exc, refused, max_refused)
            return refused
        return []

    async def _isolate(
        self, part: pa.Table, first: int, error: StoreDataError, refused: list[Refused], max_refused: int
    ) -> None:
        """``part`` (rows ``first``... of the batch) was refused with ``error``: its rows
        refused alone are added to ``refused``, the others stored."""
        if part.num_rows == 1:
            refused.append(Refused(first, error.code, _reason(error)))
            if len(refused) > max_refused:
                raise TooManyRefused(
                    f"ClickHouse refused more than {max_refused} rows of a batch, each alone: {error}", error.code
                ) from error
            return
        half = part.num_rows // 2
        for piece, at in ((part.slice(0, half), first), (part.slice(half), first + half)):
            try:
                await self._insert(piece)
            except StoreDataError as exc:
                await self._isolate(piece, at, exc, refused, max_refused)

    async def _insert(self, rows: pa.Table) -> None:
        async def insert() -> None:
            started = time.perf_counter()
            resolved = rows if self._corrections is None else await self._corrections.resolve(rows)
            await self._store.insert_arrow(self._table, resolved)
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


def _reason(error: StoreDataError) -> str:
    """The server's message, named by its code, without the transport's preamble, cut to a
    size that fits a Kafka header comfortably."""
    text = str(error)
    start = text.find("Code: ")
    message = text[start:] if start >= 0 else text
    name = Code(error.code).name if error.code is not None else "no code"  # a DATA code: a Code member
    return f"ClickHouse refused the row ({name}): {message.strip()}"[:1000]
