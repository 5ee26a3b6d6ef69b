"""One batch, end to end: validate -> insert -> dead-letter -> commit.

Offsets are committed only after the batch's valid events are in ClickHouse and its
invalid ones (refused by validation, or by ClickHouse for a value) in the dead-letter
topic. Anything that stops a batch half-way rewinds
the partitions to the batch's first offsets and commits nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, cast

import pyarrow as pa
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from cdr.ingest.dlq import DeadLetter, DlqLimit, DlqLimitExceeded
from cdr.ingest.processor import Invalid, precheck
from cdr.ingest.retry import Abandoned
from cdr.ingest.validation import Validator
from cdr.ingest.writer import BatchWriter, Refused
from cdr.metrics import Metrics
from cdr.store import StoreError

if TYPE_CHECKING:
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
        validator: Validator,
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
        self._validator = validator
        self._max_bytes = max_event_bytes
        self._writer = writer
        self._dead_letters = dead_letters
        self._limit = dlq_limit
        self._metrics = metrics
        self._stopping = stopping
        # The newest batch's task (it waits for the one before it, so awaiting it awaits
        # them all), every unfinished one, and room for the batch being validated (one:
        # two validation threads would only share the GIL's Python parts)
        self._inflight: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._validating = asyncio.Semaphore(1)
        # and for every batch held: the one validating and the one being written, no more
        # while an insert is retried (ClickHouse away), so memory stays bounded.
        self._held = asyncio.Semaphore(2)
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
        # Called after each batch's rows are stored: `cdr run` pokes the API's change feed,
        # which then reads them at once instead of at its next interval.
        self.on_stored: Callable[[], None] | None = None

    @property
    def healthy(self) -> bool:
        return self.fatal is None and self._writer.healthy

    async def handle(self, message: BatchMessage) -> None:
        """The FastStream batch handler. Returns as soon as this batch is under way and
        there is room for the next, so that FastStream fetches it while this one is
        validated (``Validator``: on a thread, the compiled pass off the GIL) and the one
        before is written (in ClickHouse, off the GIL). Batches are stored, and commit, in
        order. Held at once: one validating and one writing; while a write is retried,
        nothing more. Never raises: an escaped exception would let FastStream move on past a batch
        that was not stored."""
        await self._held.acquire()
        await self._validating.acquire()
        if self.halted.is_set() or self._stopping.is_set():
            self._validating.release()
            self._held.release()
            await self._finish_inflight()
            await message.nack()
            self.halted.set()
            return
        # In a context of its own: one copied from the handler's holds FastStream's message
        # (and so the whole batch) in a context variable, and the copies outlived their
        # batches until a full collection -- up to ~13 batches at full speed.
        self._inflight = asyncio.create_task(self._guarded(message, self._inflight), context=contextvars.Context())
        self._pending.add(self._inflight)
        self._inflight.add_done_callback(self._release)

    def _release(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        self._held.release()

    async def drain(self) -> None:
        """Wait until the batches in flight (if any) are finished or abandoned."""
        await self._finish_inflight()
        self.halted.set()

    def abandon(self) -> None:
        """Give up the batches in flight without committing them (a stop that cannot wait
        longer): their messages are read again after restart, and their duplicates collapse."""
        if self._pending:
            for task in self._pending:
                task.cancel()
            log.warning("stop: abandoned the batches in flight uncommitted; they are re-read after restart")
        self.halted.set()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes partitions away. The batches in flight get ``revoke_wait_s`` to
        be stored and committed while they are still ours (the newest waits for the ones
        before it); past that they are left to finish, and their commits skip partitions
        no longer assigned (their new owner reads them again; the duplicates collapse).
        Their dead-letter windows start afresh wherever they go next."""
        task = self._inflight
        if task is not None and not task.done():
            _, pending = await asyncio.wait({task}, timeout=self._revoke_wait_s)
            if pending:
                log.warning(
                    "batches still in flight when their partitions were revoked; their commits will skip them",
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
            await _settled(task)

    async def _guarded(self, message: BatchMessage, previous: asyncio.Task[None] | None) -> None:
        records = message.raw_message
        verdicts: tuple[pa.Table, list[Invalid | None]] | None = None
        failure: Exception | None = None
        started = time.perf_counter()
        try:
            verdicts = await self._validate(records)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # acted on in order, after the batch before
            # A panic in the compiled validator arrives as PyO3's PanicException, a
            # BaseException by design: uncaught, the task would end with the batch neither
            # stored nor rewound, and the next batch would commit past it.
            failure = exc if isinstance(exc, Exception) else RuntimeError(f"validation crashed: {exc!r}")
        finally:
            self._validating.release()
        validate_s = time.perf_counter() - started
        if previous is not None:
            await _settled(previous)
        if self.halted.is_set():
            # The batch before failed and rewound its partitions: this one is not stored or
            # committed either, and is read again after the restart.
            return
        try:
            if failure is not None:
                raise failure
            assert verdicts is not None
            await self._store(message, *verdicts, validate_s=validate_s, started=started)
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

    async def _store(
        self,
        message: BatchMessage,
        rows: pa.Table,
        invalid: list[Invalid | None],
        *,
        validate_s: float,
        started: float,
    ) -> None:
        """Rows written, dead letters sent, offsets committed: after the batch before.
        ``invalid``: validation's verdict on each record; ``rows``: the others, in order."""
        records = message.raw_message
        validated = time.perf_counter()
        stage = self._metrics.stage
        stage("validate").observe(validate_s)
        self._metrics.events_consumed.inc(len(records))
        self._metrics.batch_size.observe(len(records))

        stored = 0
        if rows.num_rows:
            refused = await self._writer.write(rows, max_refused=self._max_refused(rows.num_rows))
            stored = rows.num_rows - len(refused)
            if stored and self.on_stored is not None:
                self.on_stored()
            self._metrics.events_stored.inc(stored)
            stage("write").observe(time.perf_counter() - validated)
            _mark_refused(invalid, refused)
        written = time.perf_counter()

        # After the write: the limit counts the rows ClickHouse refused too.
        letters = self._dead_letters_of(records, invalid)
        if letters:
            await self._dead_letters.send(letters)
            stage("dead_letter").observe(time.perf_counter() - written)
            for letter in letters:
                self._metrics.dead_lettered(letter.invalid.kind).inc()
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
        sent = time.perf_counter()

        committed = await self._commit(message.consumer, records)
        stage("commit").observe(time.perf_counter() - sent)
        log.debug(
            "batch stored",
            extra={
                "messages": len(records),
                "stored": stored,
                "dead_lettered": len(letters),
                "committed": committed,
                "validate_s": round(validate_s, 4),
                "write_s": round(written - validated, 4),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )

    def _max_refused(self, rows: int) -> int:
        """How many of a batch's ``rows`` ClickHouse may refuse before the search for them
        stops and ingest halts: past the dead-letter limit's share the limit would stop
        ingest anyway (below its minimum count, every row may be refused)."""
        if rows < self._limit.min_messages:
            return rows
        return int(rows * self._limit.max_ratio)

    async def _validate(
        self, records: tuple[ConsumerRecord[bytes, bytes], ...]
    ) -> tuple[pa.Table, list[Invalid | None]]:
        """The batch's valid events as one table in Kafka order, and why each record that
        is not among them is refused.

        The verdicts are made off the event loop (``Validator``: a thread): in `cdr run`
        the API shares the loop, and a batch's tens of milliseconds of validation would
        hold up every request waiting on it."""
        invalid = [precheck(r.value, self._max_bytes) for r in records]
        candidates = [i for i, problem in enumerate(invalid) if problem is None]
        values = [cast(bytes, records[i].value) for i in candidates]
        verdicts = await self._validator(values, datetime.now(UTC) + self._skew)
        for k, problem in verdicts.invalid.items():
            invalid[candidates[k]] = problem
        self._metrics.parsed("compiled").inc(verdicts.compiled)
        self._metrics.parsed("pydantic").inc(verdicts.model)
        return _with_sources(verdicts.rows, records, invalid), invalid

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


def _with_sources(
    rows: pa.Table, records: tuple[ConsumerRecord[bytes, bytes], ...], invalid: list[Invalid | None]
) -> pa.Table:
    """``rows`` with where each came from: its record's partition and offset (the change
    feed's order, README "Change feed"). Two columns from two plain int lists: the
    records are aiokafka's Python objects already, nothing more is built per row."""
    kept = [record for record, problem in zip(records, invalid, strict=True) if problem is None]
    return rows.append_column("source_partition", pa.array([r.partition for r in kept], pa.int32())).append_column(
        "source_offset", pa.array([r.offset for r in kept], pa.int64())
    )


def _mark_refused(invalid: list[Invalid | None], refused: list[Refused]) -> None:
    """Record ClickHouse's refusals in ``invalid``: row k of the batch's rows is its k-th
    record that validation let through."""
    if not refused:
        return
    passed = [i for i, problem in enumerate(invalid) if problem is None]
    for row in refused:
        invalid[passed[row.row]] = Invalid("refused_by_clickhouse", row.reason)


async def _settled(task: asyncio.Task[None]) -> None:
    """Until ``task`` ends, however it ends (abandoned batches end cancelled). Waiting is
    not sharing its fate: a cancelled waiter leaves it running (an insert or a commit must
    not be cut short), and its cancellation does not cancel the waiter."""
    await asyncio.wait({task})
