"""The ingestor's view of itself: probes Kafka, refreshes lag, decides readiness.

Readiness must not wait on the things it reports (a probe during a broker outage
would hang the probe), so a background task refreshes the state every interval and
``ready()`` only reads it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from cdr.metrics import Metrics

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from cdr.ingest.pipeline import Pipeline
    from cdr.ingest.sink import KafkaDeadLetters

log = logging.getLogger(__name__)

_REMIND_EVERY_S = 60.0


class IngestHealth:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        dead_letters: KafkaDeadLetters,
        consumer: Callable[[], AIOKafkaConsumer | None],
        metrics: Metrics,
        interval_s: float,
        timeout_s: float,
        stall_after_s: float,
    ) -> None:
        self._pipeline = pipeline
        self._dead_letters = dead_letters
        self._consumer = consumer
        self._metrics = metrics
        self._interval = interval_s
        self._timeout = timeout_s
        self._stall_after = stall_after_s
        self._kafka_down_since: float | None = None
        self._reminded_at = 0.0
        self._lag = 0
        self._idle_at = time.monotonic()  # last probe that found nothing waiting
        self._assigned: set[TopicPartition] = set()
        self._lag_labels: set[TopicPartition] = set()

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval)

    async def probe(self) -> None:
        try:
            await self._dead_letters.probe()
        except (KafkaError, TimeoutError, OSError) as exc:
            self._kafka_down(repr(exc))
        else:
            self._kafka_up()
        consumer = self._consumer()
        self._assigned = set(consumer.assignment()) if consumer is not None else set()
        self._metrics.assigned_partitions.set(len(self._assigned))
        if consumer is not None and self._kafka_down_since is None:
            try:
                await asyncio.wait_for(self._refresh_lag(consumer), self._timeout)
            except (KafkaError, TimeoutError) as exc:
                log.debug("lag not refreshed", extra={"error": repr(exc)})
        ok, _ = self.ready()
        self._metrics.ingest_healthy.set(1 if ok else 0)

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        assigned = sorted(self._assigned)
        ends = await consumer.end_offsets(assigned) if assigned else {}
        total = 0
        for tp in assigned:
            done = self._pipeline.committed.get(tp)
            if done is None:
                done = await consumer.committed(tp)
            if done is None:
                done = (await consumer.beginning_offsets([tp]))[tp]
            lag = max(ends[tp] - done, 0)
            total += lag
            self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        for gone in self._lag_labels - set(assigned):
            self._metrics.consumer_lag.remove(gone.topic, str(gone.partition))
        self._lag_labels = set(assigned)
        self._lag = total
        if total == 0:
            self._idle_at = time.monotonic()
        self._metrics.last_progress.set(time.time() - (time.monotonic() - self._progress_at()))

    def _progress_at(self) -> float:
        return max(self._pipeline.last_commit, self._idle_at)

    def _kafka_down(self, error: str) -> None:
        now = time.monotonic()
        self._metrics.kafka_up.set(0)
        if self._kafka_down_since is None:
            self._kafka_down_since = self._reminded_at = now
            log.error("Kafka unreachable", extra={"error": error[:300]})
        elif now - self._reminded_at >= _REMIND_EVERY_S:
            self._reminded_at = now
            log.error("Kafka still unreachable", extra={"down_for_s": round(now - self._kafka_down_since)})

    def _kafka_up(self) -> None:
        self._metrics.kafka_up.set(1)
        if self._kafka_down_since is not None:
            log.info("Kafka reachable again", extra={"down_for_s": round(time.monotonic() - self._kafka_down_since)})
            self._kafka_down_since = None

    def ready(self) -> tuple[bool, dict[str, str]]:
        now = time.monotonic()
        pipeline = self._pipeline
        checks = {
            "pipeline": "halted: " + pipeline.fatal if pipeline.fatal else "ok",
            "clickhouse_inserts": "ok" if pipeline.healthy or pipeline.fatal else "failing, retrying",
            "kafka": "ok"
            if self._kafka_down_since is None
            else f"unreachable for {now - self._kafka_down_since:.0f} s",
            "partitions": f"{len(self._assigned)} assigned",
            "dead_letters": "ok"
            if self._dead_letters.failing_since is None
            else f"sends failing for {now - self._dead_letters.failing_since:.0f} s, retrying",
        }
        quiet_for = now - self._progress_at()
        stalled = self._lag > 0 and quiet_for > self._stall_after
        checks["progress"] = f"stalled: {self._lag} waiting, nothing stored for {quiet_for:.0f} s" if stalled else "ok"
        ok = (
            pipeline.fatal is None
            and pipeline.healthy
            and self._kafka_down_since is None
            and self._dead_letters.failing_since is None
            and not stalled
        )
        return ok, checks
