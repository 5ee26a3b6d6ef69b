"""Ingest throughput: Kafka -> embedded ClickHouse, beside two baselines from the same run.

(a) our ingestor (`cdr ingest`, a separate process: wall time to all rows stored and
    committed, peak RSS)
(b) raw aiokafka getmany over the same topic, no processing (the ceiling)
(c) a plain FastStream handler that validates and inserts one message at a time
    (what a first attempt looks like; measured on a prefix, it is too slow for all)

  python bench/ingest.py [--events 1000000] [--partitions 4] [--baseline-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, os.path.dirname(__file__))
from common import OUT, PeakRss, kafka, machine

from cdr.simulate import make_event

TOPIC = "bench.call-ended"


async def preload(bootstrap: str, events: int, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if TOPIC in await admin.list_topics():
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
            await consumer.start()
            tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            await consumer.stop()
            if sum(ends.values()) == events:
                print(f"topic {TOPIC} already holds {events:,} events")
                return
            await admin.delete_topics([TOPIC])
            await asyncio.sleep(2)
        await admin.create_topics([NewTopic(TOPIC, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1_048_576, compression_type=None, acks=1
    )
    await producer.start()
    rng = random.Random(42)
    tenants = [f"tenant{n:03d}.pbx.vn" for n in range(100)]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    began = time.perf_counter()
    pending = []
    for i in range(events):
        event = make_event(rng, tenants[i % 100], start + timedelta(milliseconds=250 * i))
        pending.append(await producer.send(TOPIC, orjson.dumps(event), key=event["id"].encode()))
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending.clear()
        if i and i % 200_000 == 0:
            print(f"  preloaded {i:,} events")
    await asyncio.gather(*pending)
    await producer.stop()
    print(f"preloaded {events:,} events in {time.perf_counter() - began:.1f} s")


async def raw_fetch(bootstrap: str, events: int) -> float:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    began = time.perf_counter()
    while seen < events:
        batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
        seen += sum(len(records) for records in batch.values())
    elapsed = time.perf_counter() - began
    await consumer.stop()
    return seen / elapsed


async def committed(bootstrap: str, group: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(TOPIC, p)) or 0
        return total
    finally:
        await consumer.stop()


async def our_ingestor(bootstrap: str, events: int, partitions: int) -> tuple[float, int, int]:
    data = OUT / "ingest-store"
    shutil.rmtree(data, ignore_errors=True)
    group = f"bench-{time.time_ns()}"
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CDR_KAFKA_TOPIC": TOPIC,
        "CDR_KAFKA_DLQ_TOPIC": TOPIC + ".dlq",
        "CDR_KAFKA_GROUP_ID": group,
        "CDR_DATA_DIR": str(data),
        "CDR_OPS_PORT": "0",
        "CDR_LOG_LEVEL": "WARNING",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cdr.cli", "ingest"], env=env)
    rss = PeakRss(process.pid)
    done = 0
    last_check = 0.0
    marks: dict[str, tuple[float, int]] = {}
    while done < events:
        rss.sample()
        await asyncio.sleep(0.1)
        if time.perf_counter() - last_check > 0.5:
            last_check = time.perf_counter()
            done = await committed(bootstrap, group, partitions)
            for name, share in (("p10", 0.1), ("p90", 0.9)):
                if name not in marks and done >= share * events:
                    marks[name] = (time.perf_counter(), done)
        if process.poll() is not None:
            raise SystemExit(f"cdr ingest exited with {process.returncode}")
    elapsed = time.perf_counter() - began
    (t10, n10), (t90, n90) = marks["p10"], marks["p90"]
    print(
        f"    steady state (10%..90% committed): {(n90 - n10) / (t90 - t10):,.0f} events/s;"
        f" start to finish incl. process start-up and group join: {events / elapsed:,.0f} events/s"
    )
    process.terminate()
    process.wait(timeout=60)
    # Verify: every event stored once.
    from cdr.settings import load_settings
    from cdr.store import open_store

    store = open_store(load_settings(data_dir=data, clickhouse_url=None))
    rows = await store.query("SELECT count(), uniqExact(id) FROM cdr.cdr FINAL")
    await store.close()
    return events / elapsed, rss.peak, int(rows[0][1])


async def naive_faststream(bootstrap: str, seconds: float) -> float:
    """One message per handler call: validate, insert one row, auto-commit."""
    from faststream.kafka import KafkaBroker

    from cdr.ingest.processor import to_table
    from cdr.model.event import CallEnded
    from cdr.settings import load_settings
    from cdr.store import open_store
    from cdr.store.migrations import migrate

    data = OUT / "naive-store"
    shutil.rmtree(data, ignore_errors=True)
    settings = load_settings(data_dir=data, clickhouse_url=None)
    store = open_store(settings)
    await migrate(store)
    broker = KafkaBroker(bootstrap, log_level=10)
    count = 0

    @broker.subscriber(TOPIC, group_id=f"naive-{time.time_ns()}", auto_offset_reset="earliest")
    async def handle(body: dict[str, object]) -> None:
        nonlocal count
        event = CallEnded.model_validate(body, context={"timezone": settings.zone})
        await store.insert_arrow("cdr", to_table([event]))
        count += 1

    await broker.start()
    deadline = time.perf_counter() + 60
    while count == 0:
        if time.perf_counter() > deadline:
            raise SystemExit("the one-at-a-time baseline consumed nothing in 60 s")
        await asyncio.sleep(0.05)
    start_count, began = count, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (count - start_count) / (time.perf_counter() - began)
    await broker.stop()
    await store.close()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with kafka() as bootstrap:
        await preload(bootstrap, args.events, args.partitions)
        raw = await raw_fetch(bootstrap, args.events)
        print(f"(b) raw aiokafka fetch: {raw:,.0f} msg/s")
        ours, peak, stored = await our_ingestor(bootstrap, args.events, args.partitions)
        print(f"(a) cdr ingest: {ours:,.0f} events/s, peak RSS {peak / 2**20:.0f} MB, {stored:,} distinct ids stored")
        naive = await naive_faststream(bootstrap, args.baseline_seconds)
        print(f"(c) one-at-a-time FastStream handler: {naive:,.0f} events/s (over {args.baseline_seconds:.0f} s)")
    print()
    print(f"machine: {machine()}")
    print("| run | events/s | vs raw fetch (b) | vs one-at-a-time (c) | peak RSS |")
    print("|---|---|---|---|---|")
    run = f"(a) cdr ingest, {args.events:,} events, {args.partitions} partitions"
    print(f"| {run} | {ours:,.0f} | {ours / raw:.2f}× | {ours / naive:.0f}× | {peak / 2**20:.0f} MB |")
    print(f"| (b) raw aiokafka getmany, no processing | {raw:,.0f} | 1.00× | | |")
    print(f"| (c) FastStream, validate + insert per message | {naive:,.0f} | {naive / raw:.3f}× | 1× | |")
    if stored != args.events:
        raise SystemExit(f"stored {stored:,} distinct ids, expected {args.events:,}")


if __name__ == "__main__":
    asyncio.run(main())
