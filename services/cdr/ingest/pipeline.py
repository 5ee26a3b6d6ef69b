"""One batch, end to end: validate -> dead-letter -> insert -> commit.

Offsets are committed only after the batch's valid events are in ClickHouse and its
invalid ones in the dead-letter topic. Anything that stops a batch half-way rewinds
the partitions to the batch's first offsets and commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from cdr.ingest.dlq import DeadLetter, DlqLimit, DlqLimitExceeded
from cdr.ingest.lean import LeanParser
from cdr.ingest.processor import Invalid, precheck, to_table, validate
from cdr.ingest.retry import Abandoned
from cdr.ingest.writer import BatchWriter
from cdr.metrics import Metrics
from cdr.model.event import CallEnded
from cdr.store import StoreError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from aiokafka import AIOKafkaConsumer, ConsumerRecord


log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    async def send(self, letters: list[DeadLetter]) -> None: ...


class BatchMessage(Protocol):
    """What the pipeline needs of FastStream's batch message."""

    raw_message: tuple[ConsumerRecord[bytes, bytes], ...]
    consumer: AIOKafkaConsumer

    async def nack(self) -> None: ...


class Pipeline:
    """Handles batches one at a time; after a fatal error or a stop it handles none."""

    def __init__(
        self,
        *,
        zone: ZoneInfo,
        max_event_bytes: int,
        writer: BatchWriter,
        dead_letters: DeadLetterSink,
        dlq_limit: DlqLimit,
        metrics: Metrics,
        stopping: asyncio.Event,
        revoke_wait_s: float = 10.0,
        commit_timeout_s: float = 10.0,
        max_future_skew_s: float = 3600.0,
    ) -> None:
        self._zone = zone
        self._lean = LeanParser(zone)
        self._max_bytes = max_event_bytes
        self._writer = writer
        self._dead_letters = dead_letters
        self._limit = dlq_limit
        self._metrics = metrics
        self._stopping = stopping
        self._inflight: asyncio.Task[None] | None = None
        self._revoke_wait_s = revoke_wait_s
        self._commit_timeout_s = commit_timeout_s
        self._skew = timedelta(seconds=max_future_skew_s)
        self.halted = asyncio.Event()
        self.fatal: str | None = None
        # Next offset to read per partition as last committed by us, and when (monotonic):
        # the health probe's lag and progress.
        self.committed: dict[TopicPartition, int] = {}
        self.last_commit: float = time.monotonic()
        # Revoked and not assigned again yet. aiokafka's assignment() still lists them until
        # the rebalance completes, and a commit from the old generation can still be taken
        # by the broker then, after the new owner read its start offset: never commit them.
        self._given_up: set[TopicPartition] = set()

    @property
    def healthy(self) -> bool:
        return self.fatal is None and self._writer.healthy

    async def handle(self, message: BatchMessage) -> None:
        """The FastStream batch handler. Returns once the batch before this one is
        finished and this one is under way, so that FastStream fetches and decodes the
        next batch (Python, holding the GIL) while this one is parsed and written (in
        ClickHouse, off the GIL). Batches finish, and commit, in order; at most one is
        in flight. Never raises: an escaped exception would let FastStream move on past
        a batch that was not stored."""
        await self._finish_inflight()
        if self.halted.is_set() or self._stopping.is_set():
            await message.nack()
            self.halted.set()
            return
        self._inflight = asyncio.create_task(self._guarded(message))

    async def drain(self) -> None:
        """Wait until the batch in flight (if any) is finished or abandoned."""
        await self._finish_inflight()
        self.halted.set()

    def abandon(self) -> None:
        """Give up the batch in flight without committing it (a stop that cannot wait longer):
        its messages are read again after restart, and their duplicates collapse."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            log.warning("stop: abandoned the batch in flight uncommitted; it is re-read after restart")
        self.halted.set()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes partitions away. The batch in flight gets ``revoke_wait_s`` to
        be stored and committed while they are still ours; past that it is left to
        finish, and its commit skips partitions no longer assigned (their new owner reads
        them again; the duplicates collapse). Their dead-letter windows start afresh
        wherever they go next."""
        task = self._inflight
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self._revoke_wait_s)
            except TimeoutError:
                log.warning(
                    "batch still in flight when its partitions were revoked; its commit will skip them",
                    extra={"revoked": sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked)},
                )
        self._given_up |= revoked
        for tp in revoked:
            self._limit.forget(tp.topic, tp.partition)
            self.committed.pop(tp, None)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions of the new generation: ours to commit again."""
        self._given_up -= assigned

    async def _finish_inflight(self) -> None:
        task = self._inflight
        if task is not None:
            # Shielded: a cancelled caller must not interrupt an insert or a commit.
            await asyncio.shield(task)

    async def _guarded(self, message: BatchMessage) -> None:
        try:
            await self._process(message)
        except DlqLimitExceeded as exc:
            await self._stop(message, str(exc), fatal=True)
        except Abandoned as exc:
            await self._stop(message, str(exc), fatal=False)
        except StoreError as exc:
            # Not transient (the writer retries those): retrying would fail forever.
            await self._stop(message, f"ClickHouse refused the batch (code {exc.code}): {exc}", fatal=True)
        except Exception as exc:
            log.exception("batch failed unexpectedly")
            await self._stop(message, f"unexpected error: {exc!r}", fatal=True)

    async def _stop(self, message: BatchMessage, why: str, *, fatal: bool) -> None:
        try:
            await message.nack()
        except Exception:
            log.exception("could not rewind the batch; it will be re-read after restart")
        if fatal:
            self.fatal = why
            log.critical("ingest stopped: %s", why)
        else:
            log.info("batch abandoned: %s", why)
        self.halted.set()

    async def _process(self, message: BatchMessage) -> None:
        records = message.raw_message
        started = time.perf_counter()
        rows, letters = await self._validate(records)
        validated = time.perf_counter()
        stage = self._metrics.stage_seconds
        stage.labels(stage="validate").observe(validated - started)
        self._metrics.events_consumed.inc(len(records))
        self._metrics.batch_size.observe(len(records))

        if letters:
            await self._dead_letters.send(letters)
            stage.labels(stage="dead_letter").observe(time.perf_counter() - validated)
            for letter in letters:
                self._metrics.events_dead_lettered.labels(reason=letter.invalid.kind).inc()
                log.warning(
                    "dead-lettered",
                    extra={
                        "topic": letter.topic,
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "kind": letter.invalid.kind,
                        "reason": letter.invalid.reason[:300],
                    },
                )
        if rows.num_rows:
            writing = time.perf_counter()
            await self._writer.write(rows)
            self._metrics.events_stored.inc(rows.num_rows)
            stage.labels(stage="write").observe(time.perf_counter() - writing)
        written = time.perf_counter()

        committed = await self._commit(message.consumer, records)
        stage.labels(stage="commit").observe(time.perf_counter() - written)
        log.debug(
            "batch stored",
            extra={
                "messages": len(records),
                "stored": rows.num_rows,
                "dead_lettered": len(letters),
                "committed": committed,
                "validate_s": round(validated - started, 4),
                "write_s": round(written - validated, 4),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )

    async def _validate(self, records: tuple[ConsumerRecord[bytes, bytes], ...]) -> tuple[pa.Table, list[DeadLetter]]:
        """The batch's valid events as one table in Kafka order, and its dead letters.

        Runs on a worker thread, not on the event loop: in `cdr run` the API shares the
        loop, and a batch's tens of milliseconds of validation would hold up every request
        waiting on it (the thread still takes the GIL, but hands it back every switch
        interval)."""
        return await asyncio.to_thread(self._validated, records, datetime.now(UTC) + self._skew)

    def _validated(
        self, records: tuple[ConsumerRecord[bytes, bytes], ...], latest: datetime
    ) -> tuple[pa.Table, list[DeadLetter]]:
        """The lean fast path over the whole batch; the model for the messages it leaves
        (invalid ones, and valid ones in shapes it does not take)."""
        invalid = [precheck(r.value, self._max_bytes, r.headers) for r in records]
        candidates = [i for i, problem in enumerate(invalid) if problem is None]
        lean = self._lean.parse([records[i].value for i in candidates], latest)
        tables = [lean.rows]
        self._metrics.events_parsed.labels(parser="lean").inc(lean.rows.num_rows)
        events: list[CallEnded] = []
        positions: list[int] = []
        for k in lean.rest:
            i = candidates[k]
            outcome = validate(records[i].value, self._zone, latest)
            if isinstance(outcome, Invalid):
                invalid[i] = outcome
            else:
                events.append(outcome)
                positions.append(k)
        self._metrics.events_parsed.labels(parser="pydantic").inc(len(lean.rest))
        if events:
            tables.append(to_table(events, positions))
        rows = tables[0]
        if len(tables) > 1:
            rows = pa.concat_tables(tables)
            rows = rows.take(pc.sort_indices(rows.column("n")))
        return rows.drop_columns(["n"]), self._dead_letters_of(records, invalid)

    def _dead_letters_of(
        self, records: tuple[ConsumerRecord[bytes, bytes], ...], invalid: list[Invalid | None]
    ) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        outcomes: dict[tuple[str, int], list[bool]] = defaultdict(list)
        for record, problem in zip(records, invalid, strict=True):
            outcomes[(record.topic, record.partition)].append(problem is not None)
            if problem is not None:
                letters.append(
                    DeadLetter(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        timestamp=record.timestamp,
                        key=record.key,
                        value=record.value,
                        headers=tuple(record.headers),
                        invalid=problem,
                        max_value_bytes=self._max_bytes,
                    )
                )
        for (topic, partition), flags in outcomes.items():
            self._limit.observe(topic, partition, flags)
        return letters

    async def _commit(self, consumer: AIOKafkaConsumer, records: tuple[ConsumerRecord[bytes, bytes], ...]) -> bool:
        # A batch holds each partition's records in offset order (aiokafka fetches them so),
        # so the last one seen per partition is its highest.
        last = {(r.topic, r.partition): r.offset for r in records}
        offsets = {TopicPartition(topic, partition): offset + 1 for (topic, partition), offset in last.items()}
        # Never commit for a partition this consumer no longer owns: its new owner
        # has started from the last committed offset and may be ahead or behind.
        owned = consumer.assignment() - self._given_up
        lost = [tp for tp in offsets if tp not in owned]
        if lost:
            log.info(
                "not committing partitions revoked during the batch; their new owner re-reads them",
                extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in lost)},
            )
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not offsets:
            return False
        try:
            # Bounded: with the coordinator away a commit would wait for it without end,
            # and a stop would wait for the commit.
            await asyncio.wait_for(consumer.commit(offsets), self._commit_timeout_s)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            # The partitions moved to another consumer, or the cluster is away: the batch
            # is re-read (here or by the new owner) and the duplicates collapse in
            # ClickHouse. Nothing is lost.
            log.warning("commit failed after a stored batch; it will be re-delivered", extra={"error": repr(exc)})
            return False
        self.committed.update(offsets)
        self.last_commit = time.monotonic()
        return True
