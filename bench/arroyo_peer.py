"""The same job on Sentry's Kafka consumer library, sentry-arroyo: the peer `bench/ingest.py`
runs beside `cdr ingest`.

Arroyo's own building blocks, as Snuba wires them (snuba/consumers/strategy_factory.py,
`KafkaConsumerStrategyFactory`): a `StreamProcessor` over its confluent-kafka consumer, the
transform in a `RunTaskWithMultiprocessing` pool, then `Reduce` to the insert batch and the
insert on `RunTaskInThreads`, then `CommitOffsets`: offsets move only after the insert. The
work is the ingestor's own: the compiled validation with the model for the rest
(`validate_batch`) and one insert of the Arrow table through the same store client into the
same schema. Invalid events are counted, not dead-lettered (the benchmark's traffic has none).

Two modes:
- `--processes N` (N >= 1, the default 2): Snuba's shape. Snuba's transform runs once per
  message in the pool; this validator is a batch API (~0.6-0.9 ms a call on one message
  against ~6 µs an event in a batch of 2,000, measured while writing this), so a per-message
  pool would be a strawman. Instead `Reduce` first cuts chunks of batch_size / N messages and
  the pool validates one chunk per task (arroyo's `max_batch_size=1`): every process validates
  a slice of each insert batch, and the insert `Reduce` joins N chunks.
- `--processes 0`: no pool; `Reduce` to the batch, validate and insert on one
  `RunTaskInThreads` thread (the ingestor's shape: one process, validation on a thread).

Both keep one insert in flight (like the ingestor; Snuba runs two, but the embedded engine's
client is one per thread here).

  python bench/arroyo_peer.py BOOTSTRAP TOPIC GROUP DATA_DIR [--offset-reset earliest|latest] [--processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import (
    CommitOffsets,
    ProcessingStrategy,
    ProcessingStrategyFactory,
    Reduce,
    RunTaskInThreads,
    RunTaskWithMultiprocessing,
)
from arroyo.processing.strategies.run_task_with_multiprocessing import MultiprocessingPool
from arroyo.types import BaseValue, Commit, Message, Partition, Topic

from cdr.ingest.validation import validate_batch
from cdr.settings import load_settings
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from cdr.tenants import TenantZones

# Snuba's `snuba consumer --processes` has no default (snuba/cli/consumer.py: None runs the
# transform in the consumer's process); a deployment sets it per consumer, and arroyo's
# RunTaskWithMultiprocessing docstring says to add processes while the pool is the
# bottleneck: on two cores that is one process a core. Snuba also leaves
# --input-block-size / --output-block-size unset (arroyo sizes the shared-memory blocks
# itself), as this peer does.
SNUBA_PROCESSES_ON_TWO_CORES = 2
# librdkafka's per-partition fetch, as large as the raw aiokafka fetch's (bench/ingest.py,
# `raw_fetch`): with its default 1 MB (or 2 MB, the ingestor's aiokafka figure) arroyo alone,
# doing no work on this 4-partition topic, took 13 k messages/s at a quarter of a core;
# with 8 MB, 47-53 k (throwaway probes, 2026-12-07).
FETCH_BYTES_PER_PARTITION = 8 * 1024 * 1024


def validate_chunk(zone: ZoneInfo, skew_s: float, message: Message[list[bytes]]) -> tuple[pa.Table, int]:
    """A chunk's valid rows and how many were refused; runs in a pool process."""
    verdicts = validate_batch(message.payload, TenantZones(zone), datetime.now(UTC) + timedelta(seconds=skew_s))
    return verdicts.rows, len(verdicts.invalid)


class Writer:
    """Inserts one batch; runs on arroyo's insert thread, with its own loop. In the thread
    mode it validates the batch first, on the same thread."""

    def __init__(self, store: Store, zone: ZoneInfo, max_future_skew_s: float) -> None:
        self._store = store
        self.zone = zone
        self.skew_s = max_future_skew_s
        self._loop = asyncio.new_event_loop()
        self.invalid = 0

    def validate_and_insert(self, message: Message[list[bytes]]) -> None:
        rows, invalid = validate_chunk(self.zone, self.skew_s, message)
        self.invalid += invalid
        self._loop.run_until_complete(self._store.insert_arrow("cdr", rows))

    def insert(self, message: Message[list[tuple[pa.Table, int]]]) -> None:
        self.invalid += sum(invalid for _, invalid in message.payload)
        rows = pa.concat_tables([rows for rows, _ in message.payload])
        self._loop.run_until_complete(self._store.insert_arrow("cdr", rows))


def _append_value(batch: list[bytes], value: BaseValue[KafkaPayload]) -> list[bytes]:
    batch.append(value.payload.value)
    return batch


def _append_chunk(
    chunks: list[tuple[pa.Table, int]], value: BaseValue[tuple[pa.Table, int]]
) -> list[tuple[pa.Table, int]]:
    chunks.append(value.payload)
    return chunks


class Factory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(
        self, writer: Writer, pool: MultiprocessingPool | None, processes: int, batch_size: int, batch_time_s: float
    ) -> None:
        self._writer = writer
        self._pool = pool
        self._processes = processes
        self._batch_size = batch_size
        self._batch_time_s = batch_time_s

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        if self._pool is None:
            write = RunTaskInThreads(
                self._writer.validate_and_insert, concurrency=1, max_pending_futures=1, next_step=CommitOffsets(commit)
            )
            return Reduce(self._batch_size, self._batch_time_s, _append_value, list, write)
        insert = RunTaskInThreads(
            self._writer.insert, concurrency=1, max_pending_futures=1, next_step=CommitOffsets(commit)
        )
        collect: Reduce[tuple[pa.Table, int], list[tuple[pa.Table, int]]] = Reduce(
            self._processes, self._batch_time_s, _append_chunk, list, insert
        )
        validate = RunTaskWithMultiprocessing(
            functools.partial(validate_chunk, self._writer.zone, self._writer.skew_s),
            collect,
            max_batch_size=1,  # one chunk a task: the chunks of a batch go to different processes
            max_batch_time=self._batch_time_s,
            pool=self._pool,
        )
        chunk = max(1, self._batch_size // self._processes)
        return Reduce(chunk, self._batch_time_s, _append_value, list, validate)


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("data", type=Path)
    parser.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest")
    parser.add_argument(
        "--processes",
        type=int,
        default=SNUBA_PROCESSES_ON_TWO_CORES,
        help="RunTaskWithMultiprocessing processes; 0 = validate on the insert thread, no pool",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = arguments()
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(data_dir=args.data, clickhouse_url=None)
    store = open_store(settings.clickhouse)
    asyncio.run(migrate(store))
    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {"max.partition.fetch.bytes": FETCH_BYTES_PER_PARTITION},
            group_id=args.group,
            auto_offset_reset=args.offset_reset,
            bootstrap_servers=[args.bootstrap],
            enable_auto_commit=False,
        )
    )
    writer = Writer(store, settings.common.zone, settings.ingest.max_future_skew_s)
    pool = MultiprocessingPool(args.processes) if args.processes > 0 else None
    factory = Factory(writer, pool, args.processes, settings.ingest.batch_size, settings.ingest.batch_time_ms / 1000)
    processor = StreamProcessor(consumer, Topic(args.topic), factory)
    signal.signal(signal.SIGTERM, lambda *_: processor.signal_shutdown())
    signal.signal(signal.SIGINT, lambda *_: processor.signal_shutdown())
    processor.run()
    if pool is not None:
        pool.close()
    asyncio.run(store.close())
    if writer.invalid:
        print(f"arroyo peer: {writer.invalid} invalid events skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
