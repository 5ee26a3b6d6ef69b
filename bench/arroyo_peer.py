"""The same job on Sentry's Kafka consumer library, sentry-arroyo: the peer `bench/ingest.py`
runs beside `cdr ingest`.

Arroyo's own building blocks, as Snuba uses them: a `StreamProcessor` over its
confluent-kafka consumer, `Reduce` batching (the ingestor's batch size and time),
`RunTaskInThreads` for the write (one batch in flight, like the ingestor), then
`CommitOffsets`: offsets move only after the insert. The batch step is the ingestor's
own: the compiled validation with the model for the rest (`validate_batch`, on arroyo's
write thread rather than the ingestor's worker process) and one
insert of the Arrow table through the same store client into the same schema. Invalid
events are counted, not dead-lettered (the benchmark's traffic has none).

  python bench/arroyo_peer.py BOOTSTRAP TOPIC GROUP DATA_DIR [earliest|latest]
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import (
    CommitOffsets,
    ProcessingStrategy,
    ProcessingStrategyFactory,
    Reduce,
    RunTaskInThreads,
)
from arroyo.types import BaseValue, Commit, Message, Partition, Topic

from cdr.ingest.validation import validate_batch
from cdr.settings import load_settings
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from cdr.tenants import TenantZones


class Writer:
    """Validates and inserts one batch; runs on arroyo's worker thread, with its own loop."""

    def __init__(self, store: Store, zone: Any, max_future_skew_s: float) -> None:
        self._store = store
        self._zone = zone
        self._skew = timedelta(seconds=max_future_skew_s)
        self._loop = asyncio.new_event_loop()
        self.invalid = 0

    def __call__(self, message: Message[list[bytes]]) -> None:
        verdicts = validate_batch(message.payload, TenantZones(self._zone), datetime.now(UTC) + self._skew)
        self.invalid += len(verdicts.invalid)
        self._loop.run_until_complete(self._store.insert_arrow("cdr", verdicts.rows))


def _append(batch: list[bytes], value: BaseValue[KafkaPayload]) -> list[bytes]:
    batch.append(value.payload.value)
    return batch


class Factory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, writer: Writer, batch_size: int, batch_time_s: float) -> None:
        self._writer = writer
        self._batch_size = batch_size
        self._batch_time_s = batch_time_s

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        write = RunTaskInThreads(self._writer, concurrency=1, max_pending_futures=1, next_step=CommitOffsets(commit))
        return Reduce(self._batch_size, self._batch_time_s, _append, list, write)


def main() -> None:
    bootstrap, topic, group, data = sys.argv[1:5]
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(data_dir=Path(data), clickhouse_url=None)
    store = open_store(settings.clickhouse)
    asyncio.run(migrate(store))
    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {},
            group_id=group,
            auto_offset_reset=sys.argv[5] if len(sys.argv) > 5 else "earliest",
            bootstrap_servers=[bootstrap],
            enable_auto_commit=False,
        )
    )
    writer = Writer(store, settings.common.zone, settings.ingest.max_future_skew_s)
    factory = Factory(writer, settings.ingest.batch_size, settings.ingest.batch_time_ms / 1000)
    processor = StreamProcessor(consumer, Topic(topic), factory)
    signal.signal(signal.SIGTERM, lambda *_: processor.signal_shutdown())
    signal.signal(signal.SIGINT, lambda *_: processor.signal_shutdown())
    processor.run()
    asyncio.run(store.close())
    if writer.invalid:
        print(f"arroyo peer: {writer.invalid} invalid events skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
