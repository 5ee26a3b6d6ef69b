"""Wiring of the ingestor: FastStream broker, batch subscriber, pipeline, ops server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from starlette.applications import Starlette

from cdr.ingest.dlq import DlqLimit
from cdr.ingest.pipeline import Pipeline
from cdr.ingest.sink import KafkaDeadLetters
from cdr.ingest.sqlparse import SqlParser
from cdr.ingest.writer import BatchWriter
from cdr.metrics import Metrics
from cdr.ops import ops_routes
from cdr.settings import Settings
from cdr.store import Store

log = logging.getLogger(__name__)


async def _no_decode(message: object) -> None:
    # The pipeline reads the raw records itself; FastStream's per-message JSON decode
    # would cost more than the whole validation.
    return None


@dataclass
class Ingestor:
    """A configured, not yet started ingestor."""

    settings: Settings
    broker: KafkaBroker
    pipeline: Pipeline
    dead_letters: KafkaDeadLetters
    stopping: asyncio.Event

    async def start(self) -> None:
        await self.dead_letters.start()
        await self.broker.start()
        log.info(
            "ingest started",
            extra={
                "topic": self.settings.kafka_topic,
                "group_id": self.settings.kafka_group_id,
                "batch_size": self.settings.batch_size,
                "batch_time_ms": self.settings.batch_time_ms,
            },
        )

    async def wait(self) -> None:
        """Until a stop is requested or the pipeline halts by itself."""
        stop = asyncio.ensure_future(self.stopping.wait())
        halt = asyncio.ensure_future(self.pipeline.halted.wait())
        await asyncio.wait({stop, halt}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        halt.cancel()

    async def stop(self) -> None:
        """Finish (or abandon) the batch in hand, then leave the group."""
        self.stopping.set()
        await self.pipeline.drain()
        await self.broker.stop()
        await self.dead_letters.stop()
        log.info("ingest stopped", extra={"fatal": self.pipeline.fatal})

    async def ready(self) -> tuple[bool, dict[str, str]]:
        checks = {
            "pipeline": "halted: " + self.pipeline.fatal if self.pipeline.fatal else "ok",
            "clickhouse_inserts": "ok" if self.pipeline.healthy or self.pipeline.fatal else "failing, retrying",
        }
        return self.pipeline.healthy, checks


def build_ingestor(settings: Settings, store: Store, metrics: Metrics) -> Ingestor:
    stopping = asyncio.Event()
    writer = BatchWriter(
        store,
        metrics,
        stopping,
        initial_backoff_s=settings.insert_retry_initial_ms / 1000,
        max_backoff_s=settings.insert_retry_max_ms / 1000,
    )
    dead_letters = KafkaDeadLetters(settings.kafka_bootstrap_servers, settings.kafka_dlq_topic)
    pipeline = Pipeline(
        zone=settings.zone,
        max_event_bytes=settings.max_event_bytes,
        writer=writer,
        dead_letters=dead_letters,
        dlq_limit=DlqLimit(settings.dlq_max_ratio, settings.dlq_window, settings.dlq_min_messages),
        metrics=metrics,
        stopping=stopping,
        sql_parser=_sql_parser(settings, store),
        revoke_wait_s=settings.revoke_wait_ms / 1000,
    )
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id="cdr-ingest",
        log_level=logging.DEBUG,  # FastStream logs every batch at this level
    )
    register_subscriber(broker, settings, pipeline)
    return Ingestor(settings, broker, pipeline, dead_letters, stopping)


def _sql_parser(settings: Settings, store: Store) -> SqlParser | None:
    if settings.sql_parse_min_batch == 0 or not store.queries_process_tables:
        return None
    return SqlParser(store, settings.zone, settings.sql_parse_min_batch)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partition revocations to the pipeline (it drains or gives up the batch in flight)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None  # FastStream logs the assignment


def register_subscriber(broker: KafkaBroker, settings: Settings, pipeline: Pipeline) -> None:
    """Batches by size and time: the broker holds each fetch until it has
    ``fetch_min_bytes`` or ``batch_time_ms`` passed; one handler call takes at most
    ``batch_size`` records. Offsets are committed by the pipeline, never by FastStream."""
    min_bytes = min(settings.batch_size * 256, 16 * 1024 * 1024)
    subscriber = broker.subscriber(
        settings.kafka_topic,
        group_id=settings.kafka_group_id,
        group_instance_id=settings.kafka_group_instance_id,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        batch=True,
        max_records=settings.batch_size,
        batch_timeout_ms=settings.batch_time_ms,
        fetch_min_bytes=min_bytes,
        fetch_max_wait_ms=settings.batch_time_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        auto_offset_reset=settings.kafka_auto_offset_reset,
        ack_policy=AckPolicy.MANUAL,
        decoder=_no_decode,
        listener=_Rebalance(pipeline),
    )

    @subscriber
    async def on_call_ended(message: KafkaMessage) -> None:
        await pipeline.handle(message)


def ops_app(ingestor: Ingestor, metrics: Metrics) -> Starlette:
    """Health, readiness and metrics of a standalone ingestor."""
    return Starlette(routes=ops_routes(metrics, ingestor.ready))
