"""The pipeline's side of a rebalance, against a real broker and the real engine: what it
commits for partitions it no longer owns, and how long a revoke waits for the batch in
flight. (The whole group, two ingestors, is in test_ingest_faults.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from cdr.ingest.dlq import DeadLetter, DlqLimit
from cdr.ingest.pipeline import Pipeline
from cdr.ingest.validation import Validator
from cdr.ingest.writer import BatchWriter
from cdr.metrics import Metrics
from cdr.store import Store
from cdr.store.migrations import migrate
from tests.helpers import create_topics, encoded, events, refuse_inserts, stored_ids, unique, wait_for


@dataclass
class Batch:
    """FastStream's batch message as the pipeline sees it, around a real consumer."""

    raw_message: tuple[ConsumerRecord[bytes, bytes], ...]
    consumer: AIOKafkaConsumer
    nacked: list[bool] = field(default_factory=list)

    async def nack(self) -> None:
        self.nacked.append(True)


class NoDeadLetters:
    async def send(self, letters: list[DeadLetter]) -> None:
        raise AssertionError(f"no dead letters expected: {letters}")


@dataclass
class Rig:
    store: Store
    consumer: AIOKafkaConsumer
    topic: str
    stopping: asyncio.Event
    limit: DlqLimit

    def pipeline(self, revoke_wait_s: float) -> Pipeline:
        metrics = Metrics()
        writer = BatchWriter(self.store, metrics, self.stopping, initial_backoff_s=0.05, max_backoff_s=0.1)
        return Pipeline(
            validator=Validator(ZoneInfo("Asia/Ho_Chi_Minh")),
            max_event_bytes=65_536,
            writer=writer,
            dead_letters=NoDeadLetters(),
            dlq_limit=self.limit,
            metrics=metrics,
            stopping=self.stopping,
            revoke_wait_s=revoke_wait_s,
        )

    def batch(self, partitions: list[int], seed: int) -> Batch:
        pairs = encoded(events(len(partitions) * 10, seed=seed))
        records = tuple(
            ConsumerRecord(self.topic, partitions[i // 10], i % 10, 0, 0, key, value, None, 0, len(value), [])
            for i, (key, value) in enumerate(pairs)
        )
        return Batch(records, self.consumer)


@pytest.fixture
async def rig(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Rig]:
    topic = unique("rebalance")
    await create_topics(kafka_bootstrap, topic)
    store = Store(f"chdb://{tmp_path}", database="cdr")
    await migrate(store)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=unique("group"), enable_auto_commit=False)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    try:
        yield Rig(store, consumer, topic, asyncio.Event(), DlqLimit(0.5, 100, 10))
    finally:
        await consumer.stop()
        await store.close()


async def test_a_batch_commits_only_the_partitions_still_assigned(rig: Rig) -> None:
    pipeline = rig.pipeline(revoke_wait_s=5)
    batch = rig.batch([0, 2], seed=1)  # partition 2 belongs to another consumer now
    await pipeline.handle(batch)
    await pipeline.drain()
    assert pipeline.fatal is None and not batch.nacked
    assert await rig.consumer.committed(TopicPartition(rig.topic, 0)) == 10
    assert await rig.consumer.committed(TopicPartition(rig.topic, 2)) is None
    assert len(await stored_ids(rig.store)) == 20  # stored all the same; the new owner's copy collapses


async def test_a_revoke_waits_for_the_batch_in_flight_then_gives_up(rig: Rig) -> None:
    """ClickHouse refuses the insert for a while (too many parts): the revoke waits
    revoke_wait_s for the batch, no longer, and starts the partition's DLQ window afresh;
    the batch commits nothing while its insert is failing."""
    pipeline = rig.pipeline(revoke_wait_s=0.5)
    rig.limit.observe(rig.topic, 0, [True] * 5)
    await refuse_inserts(rig.store)
    await pipeline.handle(rig.batch([0, 1], seed=2))
    began = time.monotonic()
    await pipeline.on_revoked({TopicPartition(rig.topic, 0)})
    waited = time.monotonic() - began
    assert 0.4 <= waited < 3, waited
    assert (rig.topic, 0) not in rig.limit._recent
    assert await rig.consumer.committed(TopicPartition(rig.topic, 0)) is None
    rig.stopping.set()  # the writer gives up its retries; the batch is abandoned, not committed
    await pipeline.drain()
    assert pipeline.fatal is None
    assert await rig.consumer.committed(TopicPartition(rig.topic, 1)) is None


async def test_a_revoke_lets_a_quick_batch_finish_and_commit(rig: Rig) -> None:
    pipeline = rig.pipeline(revoke_wait_s=30)
    await pipeline.handle(rig.batch([0, 1], seed=3))
    await pipeline.on_revoked({TopicPartition(rig.topic, 0), TopicPartition(rig.topic, 1)})
    assert await rig.consumer.committed(TopicPartition(rig.topic, 0)) == 10
    assert await rig.consumer.committed(TopicPartition(rig.topic, 1)) == 10


async def test_a_revoked_partition_is_not_committed_until_it_is_assigned_again(rig: Rig) -> None:
    """Between the revoke callback and the end of the rebalance, the consumer still lists
    the old partitions and the broker may still take the old generation's commit, after
    the new owner read its start offset (an offset moving backwards). A batch handled in
    that window commits only what is still ours."""
    pipeline = rig.pipeline(revoke_wait_s=30)
    p0, p1 = TopicPartition(rig.topic, 0), TopicPartition(rig.topic, 1)
    await pipeline.on_revoked({p0})
    assert p0 in rig.consumer.assignment()  # the window: still listed
    await pipeline.handle(rig.batch([0, 1], seed=4))

    async def p1_committed() -> bool:
        return await rig.consumer.committed(p1) == 10

    await wait_for(p1_committed, 30, "the first batch's commit")
    assert await rig.consumer.committed(p0) is None
    pipeline.on_assigned({p0, p1})  # the new generation: p0 back, its batches commit again
    await pipeline.handle(rig.batch([0, 1], seed=5))
    await pipeline.drain()
    assert await rig.consumer.committed(p0) == 10  # (the rig's batches all hold offsets 0-9)


async def test_batches_behind_a_failed_one_are_neither_stored_nor_committed(rig: Rig) -> None:
    """Batches overlap: the next one is validated while the one before is written. When
    that write fails for good, the next is not written or committed (the failed batch
    rewound the partitions: both are read again after the restart), and a batch handed
    over after the halt is rewound too."""
    pipeline = rig.pipeline(revoke_wait_s=5)
    # (The change feed's view reads the column: it goes first, or ClickHouse refuses the drop.)
    await rig.store.command(f"DROP VIEW {rig.store.qualified('cdr_changes_mv')}")
    await rig.store.command(f"ALTER TABLE {rig.store.qualified('cdr')} DROP COLUMN receive_dest")
    first, second, third = (rig.batch([0, 1], seed=seed) for seed in (6, 7, 8))
    await pipeline.handle(first)
    await pipeline.handle(second)  # under way while the first one's insert fails
    await asyncio.wait_for(pipeline.halted.wait(), 30)
    await pipeline.handle(third)
    await pipeline.drain()
    assert pipeline.fatal is not None and "code 16" in pipeline.fatal, pipeline.fatal
    assert first.nacked and not second.nacked and third.nacked
    assert await stored_ids(rig.store) == []
    for partition in (0, 1):
        assert await rig.consumer.committed(TopicPartition(rig.topic, partition)) is None


async def test_an_abandoned_stop_cancels_every_batch_in_flight_uncommitted(rig: Rig) -> None:
    """A stop that cannot wait for an insert being retried (ClickHouse away) gives up the
    batch being written and the one validated behind it: nothing is committed."""
    pipeline = rig.pipeline(revoke_wait_s=5)
    await refuse_inserts(rig.store)
    await pipeline.handle(rig.batch([0, 1], seed=9))
    await pipeline.handle(rig.batch([0, 1], seed=10))
    await asyncio.sleep(0.3)  # the first insert is failing and being retried
    pipeline.abandon()
    await asyncio.wait_for(pipeline.drain(), 5)
    assert pipeline.halted.is_set() and pipeline.fatal is None
    for partition in (0, 1):
        assert await rig.consumer.committed(TopicPartition(rig.topic, partition)) is None
