"""A batch's validation in the pipeline: the compiled validator, the model for what it leaves, the
rows back in Kafka order and the refused ones with their reasons."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
from aiokafka import ConsumerRecord, TopicPartition

from cdr.ingest.dlq import DeadLetter, DlqLimit
from cdr.ingest.pipeline import Pipeline
from cdr.ingest.validation import Validator, Verdicts
from cdr.ingest.writer import BatchWriter
from cdr.metrics import Metrics
from cdr.simulate import make_event
from cdr.store import Store
from cdr.store.migrations import migrate

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def event(seed: int, **changes: object) -> dict[str, object]:
    data = make_event(random.Random(seed), "t.example", datetime(2024, 3, 9, 10, 11, 12, tzinfo=UTC))
    return {**data, **changes}


async def test_compiled_and_model_rows_come_back_in_kafka_order(tmp_path: Path) -> None:
    store = Store(f"chdb://{tmp_path}", database="cdr")  # the writer is not used by _validate
    metrics = Metrics()
    pipeline = _pipeline(store, Validator(HCM), metrics)
    integer_times = event(1, time_started=1709979000, time_answered=None, time_ended=1709979072)
    events = [event(0), integer_times, event(2, duration="x"), event(3), event(4, cause="x" * 5_000), event(5)]
    records = tuple(
        ConsumerRecord("calls", 0, offset, 0, 0, None, orjson.dumps(data), None, 0, 0, [])
        for offset, data in enumerate(events)
    )
    try:
        rows, invalid = await pipeline._validate(records)
    finally:
        await store.close()
    assert rows.column("id").to_pylist() == [events[n]["id"] for n in (0, 1, 3, 5)]
    refused = [(n, problem) for n, problem in enumerate(invalid) if problem is not None]
    assert [(n, problem.kind) for n, problem in refused] == [(2, "invalid_event"), (4, "too_large")]
    assert "duration" in refused[0][1].reason
    parsed = {s.labels["parser"]: s.value for s in metrics.events_parsed.collect()[0].samples if "total" in s.name}
    assert parsed == {"compiled": 3.0, "pydantic": 2.0}  # integer times and the bad event went to the model


class _Panic(BaseException):
    """What PyO3 raises for a panic in Rust code (pyo3_runtime.PanicException): a BaseException."""


class _PanicsOnce(Validator):
    def __init__(self) -> None:
        super().__init__(HCM)
        self.calls = 0

    async def __call__(self, values: Sequence[bytes], latest_emitted_at: datetime) -> Verdicts:
        self.calls += 1
        if self.calls == 1:
            raise _Panic("panicked at src/lib.rs")
        return await super().__call__(values, latest_emitted_at)


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("calls", 0)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


class _Batch:
    """FastStream's batch message as the pipeline uses it: records, consumer, nack."""

    def __init__(self, consumer: _Consumer, offsets: range) -> None:
        self.consumer = consumer
        self.nacked = False
        self.raw_message = tuple(
            ConsumerRecord("calls", 0, o, 0, 0, None, orjson.dumps(event(o)), None, 0, 0, []) for o in offsets
        )

    async def nack(self) -> None:
        self.nacked = True


async def test_a_panic_in_the_validator_stops_ingest_and_nothing_commits_past_its_batch(tmp_path: Path) -> None:
    store = Store(f"chdb://{tmp_path}", database="cdr")
    await migrate(store)  # so that, uncaught, the batch after the panic would be stored and committed
    pipeline = _pipeline(store, _PanicsOnce(), Metrics())
    consumer = _Consumer()
    first, second = _Batch(consumer, range(3)), _Batch(consumer, range(3, 5))
    try:
        await pipeline.handle(first)  # type: ignore[arg-type]
        await pipeline.handle(second)  # type: ignore[arg-type]
        await pipeline.drain()
    finally:
        await store.close()
    assert pipeline.halted.is_set() and pipeline.fatal is not None and "validation crashed" in pipeline.fatal
    assert first.nacked and not consumer.commits  # rewound; the batch after it neither stored nor committed


def _pipeline(store: Store, validator: Validator, metrics: Metrics) -> Pipeline:
    return Pipeline(
        validator=validator,
        max_event_bytes=4_096,
        writer=BatchWriter(store, metrics, asyncio.Event(), initial_backoff_s=0.01, max_backoff_s=0.01),
        dead_letters=_NoDeadLetters(),
        dlq_limit=DlqLimit(0.9, 100, 10),
        metrics=metrics,
        stopping=asyncio.Event(),
    )


class _NoDeadLetters:
    async def send(self, letters: list[DeadLetter]) -> None:
        raise AssertionError("not called by _validate")
