"""Ingest throughput: Kafka -> embedded ClickHouse, beside two baselines from the same run.

(a) our ingestor (`cdr ingest`, a separate process: wall time to all rows stored and
    committed, peak RSS)
(b) raw aiokafka getmany over the same topic, no processing (the ceiling)
(c) a plain FastStream handler that validates and inserts one message at a time
    (what a first attempt looks like; measured on a prefix, it is too slow for all)
(d) the same job on sentry-arroyo (`bench/arroyo_peer.py`), the peer: validation in a
    `RunTaskWithMultiprocessing` pool of `--peer-processes` processes as Snuba runs its
    consumers (default 2, one a core here), or with 0 on the insert thread of one process

Memory is the whole process tree's.

  python bench/ingest.py [--events 1000000] [--partitions 4] [--baseline-seconds 20] [--only-ingest]
                        [--peer-processes 2]
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, os.path.dirname(__file__))
from zoneinfo import ZoneInfo

from common import OUT, ROOT, PeakRss, kafka, machine, tree_rss

from cdr.simulate import pbx_event

TOPIC = "bench.call-ended.pbx"  # the PBX traffic mix (a new name: an older topic held other events)
DLQ = TOPIC + ".dlq"
MIX_FILE = OUT / "ingest-traffic-mix.txt"  # written by the preload, read when the topic is reused
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")  # the ingestor's default CDR_TIMEZONE


def traffic_mix(events: list[dict[str, object]]) -> str:
    """The shares of the shapes that matter to validation, as printed with the results."""
    n = len(events)

    def share(test: object) -> str:
        return f"{100 * sum(1 for e in events if test(e)) / n:.0f} %"  # type: ignore[operator]

    return ", ".join(
        [
            f"unanswered {share(lambda e: e.get('time_answered') is None)}",
            f'recording_url "" {share(lambda e: e.get("recording_url") == "")}',
            f"null {share(lambda e: 'recording_url' in e and e['recording_url'] is None)}",
            f"absent {share(lambda e: 'recording_url' not in e)}",
            f"some optional field absent {share(lambda e: len(e) < 19)}",
            f"naive times {share(lambda e: str(e['time_ended'])[10] == ' ')}",
            f"Z times {share(lambda e: str(e['time_ended']).endswith('Z'))}",
            f"+07:00 times {share(lambda e: str(e['time_ended']).endswith('+07:00'))}",
        ]
    )


def pbx_events(events: int) -> Iterator[dict[str, object]]:
    """The benchmark's events, the same every run: 100 tenants, a call ending every 250 ms."""
    rng = random.Random(42)
    tenants = [f"tenant{n:03d}.pbx.vn" for n in range(100)]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(events):
        yield pbx_event(rng, tenants[i % 100], start + timedelta(milliseconds=250 * i), ZONE)


async def preload(bootstrap: str, events: int, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if DLQ not in await admin.list_topics():
            await admin.create_topics([NewTopic(DLQ, num_partitions=1, replication_factor=1)])
        if TOPIC in await admin.list_topics():
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
            await consumer.start()
            tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            await consumer.stop()
            if sum(ends.values()) == events:
                print(f"topic {TOPIC} already holds {events:,} events")
                print(MIX_FILE.read_text() if MIX_FILE.exists() else "traffic mix: not recorded by the preload")
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
    began = time.perf_counter()
    pending = []
    sample: list[dict[str, object]] = []
    for i, event in enumerate(pbx_events(events)):
        if i % 10 == 0:
            sample.append(event)
        pending.append(await producer.send(TOPIC, orjson.dumps(event), key=str(event["id"]).encode()))
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending.clear()
        if i and i % 200_000 == 0:
            print(f"  preloaded {i:,} events")
    await asyncio.gather(*pending)
    await producer.stop()
    print(f"preloaded {events:,} events in {time.perf_counter() - began:.1f} s")
    MIX_FILE.write_text(f"traffic mix (every 10th event): {traffic_mix(sample)}")
    print(MIX_FILE.read_text())


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


def ingest_environment(bootstrap: str, group: str, data: Path, topic: str = TOPIC) -> dict[str, str]:
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CDR_KAFKA_TOPIC": topic,
        "CDR_KAFKA_DLQ_TOPIC": topic + ".dlq",
        "CDR_KAFKA_GROUP_ID": group,
        "CDR_DATA_DIR": str(data),
        "CDR_OPS_PORT": "0",
        "CDR_LOG_LEVEL": "WARNING",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    return env


def consumers(bootstrap: str, group: str, data: Path, peer_processes: int) -> dict[str, list[str]]:
    """The command line of each consumer under test, by name."""
    peer = [sys.executable, str(ROOT / "bench" / "arroyo_peer.py"), bootstrap, TOPIC, group, str(data)]
    return {
        "cdr ingest": [sys.executable, "-m", "cdr.cli", "ingest"],
        "arroyo peer": [*peer, "--processes", str(peer_processes)],
    }


def peer_label(peer_processes: int) -> str:
    if peer_processes:
        return f"arroyo peer, RunTaskWithMultiprocessing, {peer_processes} processes"
    return "arroyo peer, validation on the insert thread, 1 process"


@dataclass
class Run:
    steady: float  # events/s from 10 % to 90 % committed
    overall: float  # events/s from process start to all committed
    idle_rss: int  # bytes, subscribed and caught up, before the run
    peak_rss: int
    stored: int  # distinct ids in the store afterwards


async def run_consumer(name: str, bootstrap: str, events: int, partitions: int, peer_processes: int) -> Run:
    """One consumer process over the whole topic, from its start to all offsets committed.

    Idle RSS: the same command, first run for 15 s on a group that starts at the topic's
    end (nothing to read), so the difference is what the traffic costs."""
    data = OUT / "ingest-store"
    idle_group = f"bench-idle-{time.time_ns()}"
    shutil.rmtree(data, ignore_errors=True)
    idle_env = {**ingest_environment(bootstrap, idle_group, data), "CDR_KAFKA_AUTO_OFFSET_RESET": "latest"}
    argv = consumers(bootstrap, idle_group, data, peer_processes)[name]
    if name == "arroyo peer":
        argv = [*argv, "--offset-reset", "latest"]
    idle = subprocess.Popen(argv, env=idle_env)
    await asyncio.sleep(15)
    idle_rss = tree_rss(psutil.Process(idle.pid))
    idle.terminate()
    idle.wait(timeout=60)

    shutil.rmtree(data, ignore_errors=True)
    group = f"bench-{time.time_ns()}"
    began = time.perf_counter()
    process = subprocess.Popen(
        consumers(bootstrap, group, data, peer_processes)[name], env=ingest_environment(bootstrap, group, data)
    )
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
            for mark, share in (("p10", 0.1), ("p90", 0.9)):
                if mark not in marks and done >= share * events:
                    marks[mark] = (time.perf_counter(), done)
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
    elapsed = time.perf_counter() - began
    (t10, n10), (t90, n90) = marks["p10"], marks["p90"]
    process.terminate()
    process.wait(timeout=60)
    # Verify: every event stored once.
    from cdr.settings import load_settings
    from cdr.store import open_store

    store = open_store(load_settings(data_dir=data, clickhouse_url=None).clickhouse)
    rows = await store.query("SELECT uniqExact(id) FROM cdr.cdr FINAL")
    await store.close()
    run = Run((n90 - n10) / (t90 - t10), events / elapsed, idle_rss, rss.peak, int(rows[0][0]))
    label = peer_label(peer_processes) if name == "arroyo peer" else name
    print(
        f"    {label}: steady (10%..90% committed) {run.steady:,.0f} events/s; start to finish {run.overall:,.0f}"
        f" events/s; RSS idle {run.idle_rss / 2**20:.0f} MB, peak {run.peak_rss / 2**20:.0f} MB;"
        f" {run.stored:,} distinct ids stored"
    )
    return run


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
    store = open_store(settings.clickhouse)
    await migrate(store)
    broker = KafkaBroker(bootstrap, log_level=10)
    count = 0

    @broker.subscriber(TOPIC, group_id=f"naive-{time.time_ns()}", auto_offset_reset="earliest")
    async def handle(body: dict[str, object]) -> None:
        nonlocal count
        event = CallEnded.model_validate(body, context={"timezone": settings.common.zone})
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
    parser.add_argument(
        "--peer-processes",
        type=int,
        default=2,
        help="the arroyo peer's RunTaskWithMultiprocessing processes (bench/arroyo_peer.py); 0 = one process, a thread",
    )
    parser.add_argument(
        "--only-ingest", action="store_true", help="run (a) and (b) alone: a quick look while changing the ingestor"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with kafka() as bootstrap:
        await preload(bootstrap, args.events, args.partitions)
        raw = await raw_fetch(bootstrap, args.events)
        print(f"(b) raw aiokafka fetch: {raw:,.0f} msg/s")
        runs = {
            name: await run_consumer(name, bootstrap, args.events, args.partitions, args.peer_processes)
            for name in (("cdr ingest",) if args.only_ingest else ("cdr ingest", "arroyo peer"))
        }
        if args.only_ingest:
            return
        naive = await naive_faststream(bootstrap, args.baseline_seconds)
        print(f"(c) one-at-a-time FastStream handler: {naive:,.0f} events/s (over {args.baseline_seconds:.0f} s)")
    print()
    print(f"machine: {machine()}; {args.events:,} events, {args.partitions} partitions, PBX traffic mix as above")
    print(f"peer (d): {peer_label(args.peer_processes)}")
    print(
        "| run | steady events/s | vs raw fetch (b) | vs arroyo peer (d) | start to finish | RSS idle | peak"
        " | peak − idle |"
    )
    print("|---|---|---|---|---|---|---|---|")
    peer = runs["arroyo peer"].steady
    for label, name in (("(a) `cdr ingest`", "cdr ingest"), (f"(d) {peer_label(args.peer_processes)}", "arroyo peer")):
        r = runs[name]
        print(
            f"| {label} | {r.steady:,.0f} | {r.steady / raw:.2f}× | {r.steady / peer:.2f}× | {r.overall:,.0f}"
            f" | {r.idle_rss / 2**20:.0f} MB | {r.peak_rss / 2**20:.0f} MB"
            f" | {(r.peak_rss - r.idle_rss) / 2**20:.0f} MB |"
        )
    print(f"| (b) raw aiokafka getmany, no processing | {raw:,.0f} | 1.00× | | | | | |")
    print(f"| (c) FastStream, validate + insert per message | {naive:,.0f} | {naive / raw:.3f}× | | | | | |")
    for name, r in runs.items():
        if r.stored != args.events:
            raise SystemExit(f"{name} stored {r.stored:,} distinct ids, expected {args.events:,}")


if __name__ == "__main__":
    asyncio.run(main())
