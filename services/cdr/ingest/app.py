"""Wiring of the ingestor: FastStream broker, batch subscriber, pipeline, ops server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import LogicSubscriber

from cdr.ingest.corrections import Corrections
from cdr.ingest.dlq import DlqLimit
from cdr.ingest.health import IngestHealth
from cdr.ingest.pipeline import Pipeline
from cdr.ingest.sink import KafkaDeadLetters
from cdr.ingest.validation import Validator
from cdr.ingest.writer import BatchWriter
from cdr.kafka_security import check_kafka_access, kafka_security, options_of
from cdr.metrics import Metrics
from cdr.settings import CommonSettings, IngestSettings, KafkaSettings
from cdr.startup import with_retries
from cdr.store import Store
from cdr.tenants import ZoneDirectory

log = logging.getLogger(__name__)


async def _no_decode(message: object) -> None:
    # The pipeline reads the raw records itself; FastStream's per-message JSON decode
    # would cost more than the whole validation.
    return None


@dataclass
class Ingestor:
    """A configured, not yet started ingestor."""

    kafka: KafkaSettings
    ingest: IngestSettings
    common: CommonSettings
    broker: KafkaBroker
    subscriber: LogicSubscriber[Any]
    pipeline: Pipeline
    dead_letters: KafkaDeadLetters
    health: IngestHealth
    stopping: asyncio.Event
    kafka_options: dict[str, Any]  # the clients' security, as aiokafka keyword arguments
    _monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, retrying an unreachable cluster for ``CDR_STARTUP_TIMEOUT_MS``; a missing
        topic is a SettingsError at once (no waiting on metadata that never comes)."""
        await with_retries(
            "Kafka",
            self._connect,
            transient=(KafkaError, TimeoutError, OSError),
            timeout_s=self.common.startup_timeout_ms / 1000,
            setting=self.kafka.env("kafka_bootstrap_servers"),
            value=self.kafka.kafka_bootstrap_servers,
        )
        await self.broker.start()
        self._monitor = asyncio.create_task(self.health.run())
        log.info(
            "ingest started",
            extra={
                "topic": self.kafka.kafka_topic,
                "group_id": self.kafka.kafka_group_id,
                "batch_size": self.ingest.batch_size,
                "batch_time_ms": self.ingest.batch_time_ms,
            },
        )

    async def _connect(self) -> None:
        await check_kafka_access(self.kafka, self.kafka_options)
        await self.dead_letters.start()
        try:
            await self.dead_letters.require_topics(
                {
                    self.kafka.kafka_topic: self.kafka.env("kafka_topic"),
                    self.kafka.kafka_dlq_topic: self.kafka.env("kafka_dlq_topic"),
                }
            )
        except BaseException:
            await self.dead_letters.stop()
            raise

    async def wait(self) -> None:
        """Until a stop is requested or the pipeline halts by itself."""
        stop = asyncio.ensure_future(self.stopping.wait())
        halt = asyncio.ensure_future(self.pipeline.halted.wait())
        await asyncio.wait({stop, halt}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        halt.cancel()

    async def stop(self) -> None:
        """Finish the batch in hand (or abandon it uncommitted), leave the group, close;
        all within ``CDR_SHUTDOWN_TIMEOUT_MS`` whatever state Kafka and ClickHouse are in."""
        self.stopping.set()
        deadline = time.monotonic() + self.ingest.shutdown_timeout_ms / 1000
        if self._monitor is not None:
            self._monitor.cancel()
        if not await _within(deadline, self.pipeline.drain(), "finishing the batches in flight"):
            self.pipeline.abandon()
        # Closing needs a share of the budget even when the batch took all of it.
        closing = max(deadline, time.monotonic() + 2.0)
        if self._monitor is not None:  # started: the broker is connected
            await _within(closing, self.broker.stop(), "leaving the consumer group")
        await _within(closing, self.dead_letters.stop(), "closing the dead-letter producer")
        log.info("ingest stopped", extra={"fatal": self.pipeline.fatal})

    async def ready(self) -> tuple[bool, dict[str, str]]:
        if self._monitor is None:
            return False, {"ingest": "starting (waiting for Kafka and ClickHouse)"}
        return self.health.ready()


async def _within(deadline: float, step: Awaitable[None], what: str) -> bool:
    """Run one stop step until the deadline; False (and the step cancelled) past it."""
    try:
        await asyncio.wait_for(step, timeout=max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        log.warning("stop: gave up %s (shutdown timeout)", what)
        return False
    return True


def build_ingestor(
    kafka: KafkaSettings, ingest: IngestSettings, common: CommonSettings, store: Store, metrics: Metrics
) -> Ingestor:
    stopping = asyncio.Event()
    initial_s, max_s = ingest.insert_retry_initial_ms / 1000, ingest.insert_retry_max_ms / 1000
    corrections = Corrections(store, timedelta(seconds=ingest.correction_grace_s))
    writer = BatchWriter(
        store, metrics, stopping, initial_backoff_s=initial_s, max_backoff_s=max_s, corrections=corrections
    )
    timeout_s = kafka.kafka_request_timeout_ms / 1000
    security = kafka_security(kafka)  # key files and password file read once
    options = options_of(security)
    dead_letters = KafkaDeadLetters(
        kafka.kafka_bootstrap_servers,
        kafka.kafka_dlq_topic,
        security=options,
        metrics=metrics,
        stopping=stopping,
        timeout_s=timeout_s,
        initial_backoff_s=initial_s,
        max_backoff_s=max_s,
    )
    # Naive PBX times in each tenant's zone of the tenant directory (re-read when it changes).
    zones = ZoneDirectory(common.zone, common.tenants_file, phone_region=common.phone_region)
    validator = Validator(zones, ingest.max_call_seconds)
    pipeline = Pipeline(
        validator=validator,
        max_event_bytes=ingest.max_event_bytes,
        writer=writer,
        dead_letters=dead_letters,
        dlq_limit=DlqLimit(ingest.dlq_max_ratio, ingest.dlq_window, ingest.dlq_min_messages),
        metrics=metrics,
        stopping=stopping,
        revoke_wait_s=ingest.revoke_wait_ms / 1000,
        commit_timeout_s=timeout_s,
        max_future_skew_s=ingest.max_future_skew_s,
    )
    broker = KafkaBroker(
        kafka.kafka_bootstrap_servers,
        client_id="cdr-ingest",
        security=security,
        request_timeout_ms=kafka.kafka_request_timeout_ms,
        log_level=logging.DEBUG,  # FastStream logs every batch at this level
    )
    subscriber = register_subscriber(broker, kafka, ingest, pipeline)
    health = IngestHealth(
        pipeline=pipeline,
        dead_letters=dead_letters,
        consumer=lambda: subscriber.consumer,
        metrics=metrics,
        interval_s=ingest.health_interval_ms / 1000,
        timeout_s=timeout_s,
        stall_after_s=ingest.stall_after_ms / 1000,
    )
    return Ingestor(kafka, ingest, common, broker, subscriber, pipeline, dead_letters, health, stopping, options)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partition revocations to the pipeline (it drains or gives up the batches in flight)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline.on_assigned(assigned)  # FastStream logs the assignment


_POLL_MS = 50  # FastStream's empty-poll wait (and sleep) between fetches: freshness' granularity
# What aiokafka prefetches per partition, and the broker's minimum before it answers early.
# 2 MB held the same rate as 8 MB with ~100 MB less peak RSS (one run, bench/RESULTS.md);
# 1 MB, under the minimum of the 4-partition benchmark, made every fetch wait the batch time.
_FETCH_BYTES_PER_PARTITION = 2 * 1024 * 1024


def register_subscriber(
    broker: KafkaBroker, kafka: KafkaSettings, ingest: IngestSettings, pipeline: Pipeline
) -> LogicSubscriber[Any]:
    """Batches by size and time: the broker holds each fetch until it has
    ``fetch_min_bytes`` or ``batch_time_ms`` passed; one handler call takes at most
    ``batch_size`` records. Offsets are committed by the pipeline, never by FastStream.

    FastStream waits ``batch_timeout_ms`` for records and, when none came, sleeps as long
    again before it asks: with the batch time there, a quiet topic's call waited up to
    about three batch times (p50 2.2 s at 1,000 events/s with 1 s). Its wait is kept short
    (records in aiokafka's buffer are returned at once whatever it is); the broker's hold
    is the one bound."""
    min_bytes = min(ingest.batch_size * 256, _FETCH_BYTES_PER_PARTITION)
    subscriber = broker.subscriber(
        kafka.kafka_topic,
        group_id=kafka.kafka_group_id,
        group_instance_id=kafka.kafka_group_instance_id,
        session_timeout_ms=kafka.kafka_session_timeout_ms,
        batch=True,
        max_records=ingest.batch_size,
        batch_timeout_ms=min(ingest.batch_time_ms, _POLL_MS),
        fetch_min_bytes=min_bytes,
        fetch_max_wait_ms=ingest.batch_time_ms,
        max_partition_fetch_bytes=_FETCH_BYTES_PER_PARTITION,
        auto_offset_reset=kafka.kafka_auto_offset_reset,
        isolation_level=kafka.kafka_isolation_level,
        ack_policy=AckPolicy.MANUAL,
        decoder=_no_decode,
        listener=_Rebalance(pipeline),
    )

    @subscriber
    async def on_call_ended(message: KafkaMessage) -> None:
        await pipeline.handle(message)

    return subscriber
