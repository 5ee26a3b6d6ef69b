"""Memory and CPU of `cdr ingest` catching up on a backlog at full speed, per batch size:
the measurements the chart's ingest sizing rule is derived from
(`cdr.ingestResources` in deploy/helm/cdr/templates/_helpers.tpl; bench/RESULTS.md, "Issue 26
item 2").

Each configuration is one `cdr ingest` process (validation runs on a thread of it; its tree
is read whole all the same) on the embedded engine, reading a preloaded topic from its start
with a new group, sampled every 0.5 s until everything is committed. From /proc/PID/smaps of each process:

- tree RSS: the sum of the processes' RSS, as bench/ingest.py reports it (it counts a shared
  library once per process that maps it);
- pod: what a memory cgroup would charge, each page once: every process's anonymous pages plus,
  per mapped file, its resident pages in the process holding most of them;
- chdb: the embedded engine's library pages (file-backed, in the consumer only);
- pod without chdb: the pod figure less those. The engine's heap stays in it (anonymous memory
  cannot be told apart by owner), so it overstates a pod that writes to a ClickHouse server,
  the chart's only mode; `--engine-probe` measures that heap on its own.

Idle is the same command on a group that starts at the topic's end, after `--idle-seconds`.

  python bench/sizing.py [--events 400000] [--batch-sizes 5000 20000 50000]
                         [--engine-probe]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, os.path.dirname(__file__))
from common import OUT, kafka, machine
from ingest import ingest_environment, pbx_events

MIB = 2**20
# Enough that a fetch can fill the largest batch: aiokafka holds at most 2 MB a partition
# (~3,400 of these events), so 4 partitions never make a batch of more than ~13,000.
PARTITIONS = 16


@dataclass
class Footprint:
    """One sample of a process tree, in bytes."""

    tree_rss: int = 0
    pod: int = 0
    chdb: int = 0
    per_process: dict[int, int] = field(default_factory=dict)  # pid -> RSS

    @property
    def without_chdb(self) -> int:
        return self.pod - self.chdb


def smaps(pid: int) -> tuple[int, int, dict[str, int]]:
    """(RSS, anonymous bytes, resident file-backed bytes per path) of one process."""
    rss = anon = 0
    files: dict[str, int] = {}
    path = ""
    mapping_rss = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if not name.endswith(":"):  # a mapping's header: address range ... [path]
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
            elif name == "Rss:":
                mapping_rss = int(rest.split()[0]) * 1024
                rss += mapping_rss
            elif name == "Anonymous:":
                mapping_anon = int(rest.split()[0]) * 1024
                anon += mapping_anon
                if path.startswith("/"):
                    files[path] = files.get(path, 0) + mapping_rss - mapping_anon
    return rss, anon, files


def footprint(root: psutil.Process) -> Footprint:
    sample = Footprint()
    files: dict[str, int] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            rss, anon, mapped = smaps(process.pid)
        except (FileNotFoundError, ProcessLookupError, psutil.Error):
            continue  # a process that just ended
        sample.tree_rss += rss
        sample.pod += anon
        sample.per_process[process.pid] = rss
        for path, resident in mapped.items():
            files[path] = max(files.get(path, 0), resident)
    sample.pod += sum(files.values())
    sample.chdb = sum(resident for path, resident in files.items() if "chdb" in path)
    return sample


@dataclass
class Peak:
    tree_rss: int = 0
    pod: int = 0
    without_chdb: int = 0
    chdb: int = 0
    consumer: int = 0

    def add(self, sample: Footprint, consumer_pid: int) -> None:
        self.tree_rss = max(self.tree_rss, sample.tree_rss)
        self.pod = max(self.pod, sample.pod)
        self.without_chdb = max(self.without_chdb, sample.without_chdb)
        self.chdb = max(self.chdb, sample.chdb)
        self.consumer = max(self.consumer, sample.per_process.get(consumer_pid, 0))


async def preload(bootstrap: str, topic: str, events: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = await admin.list_topics()
        for name in (topic, topic + ".dlq"):
            if name not in existing:
                await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    if await end_offsets(bootstrap, topic) == events:
        print(f"topic {topic} already holds {events:,} events")
        return
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1_048_576, acks=1)
    await producer.start()
    pending = []
    for event in pbx_events(events):
        pending.append(await producer.send(topic, orjson.dumps(event), key=str(event["id"]).encode()))
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await producer.stop()
    print(f"preloaded {events:,} events into {topic}")


async def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def committed(bootstrap: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)])
    finally:
        await consumer.stop()


def start(bootstrap: str, topic: str, group: str, batch: int, **extra: str) -> subprocess.Popen[bytes]:
    data = OUT / "sizing-store"
    shutil.rmtree(data, ignore_errors=True)
    env = {
        **ingest_environment(bootstrap, group, data, topic),
        "CDR_BATCH_SIZE": str(batch),
        **extra,
    }
    return subprocess.Popen([sys.executable, "-m", "cdr.cli", "ingest"], env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=60)


async def idle(bootstrap: str, topic: str, seconds: float) -> Footprint:
    process = start(bootstrap, topic, f"sizing-idle-{time.time_ns()}", 20_000, CDR_KAFKA_AUTO_OFFSET_RESET="latest")
    try:
        await asyncio.sleep(seconds)
        return footprint(psutil.Process(process.pid))
    finally:
        stop(process)


@dataclass
class Run:
    batch: int
    idle: Footprint
    peak: Peak
    events_per_s: float
    cores: float  # the whole tree
    load: float  # 1-minute load average at the end


async def catch_up(bootstrap: str, topic: str, events: int, batch: int, idle_sample: Footprint) -> Run:
    group = f"sizing-{time.time_ns()}"
    process = start(bootstrap, topic, group, batch)
    root = psutil.Process(process.pid)
    peak = Peak()
    cpu: dict[int, float] = {}
    began = time.perf_counter()
    done = 0
    last_check = 0.0
    while done < events:
        if process.poll() is not None:
            raise SystemExit(f"cdr ingest exited with {process.returncode}")
        peak.add(footprint(root), process.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
            except psutil.Error:
                continue
        await asyncio.sleep(0.5)  # smaps is read under the process's mmap lock: not too often
        if time.perf_counter() - last_check > 0.5:
            last_check = time.perf_counter()
            done = await committed(bootstrap, topic, group)
    elapsed = time.perf_counter() - began
    load = os.getloadavg()[0]
    stop(process)
    run = Run(batch, idle_sample, peak, events / elapsed, sum(cpu.values()) / elapsed, load)
    print(
        f"  batch {batch:,}: {run.events_per_s:,.0f} events/s start to finish;"
        f" peak pod {peak.pod / MIB:.0f} MB (without chdb {peak.without_chdb / MIB:.0f}, chdb library"
        f" {peak.chdb / MIB:.0f}), tree RSS {peak.tree_rss / MIB:.0f} MB; consumer {peak.consumer / MIB:.0f} MB;"
        f" CPU {run.cores:.2f} cores; load {load:.1f}",
        flush=True,
    )
    return run


def engine_probe(batches: list[int]) -> None:
    """What the embedded engine itself holds to store batches of each size: a process that
    builds one validated batch, then opens a store and inserts it ten times. Printed: RSS
    before the store is opened, after it is opened and migrated, and after the inserts."""
    code = """
import asyncio, os, sys, psutil
sys.path.insert(0, sys.argv[1])
from datetime import UTC, datetime
import orjson
from ingest import ZONE, pbx_events
from cdr.ingest.validation import validate_batch
from cdr.settings import load_settings
from cdr.store import open_store
from cdr.store.migrations import migrate
from cdr.tenants import ZoneDirectory
rss = lambda: psutil.Process().memory_info().rss / 2**20
values = [orjson.dumps(e) for e in pbx_events(int(sys.argv[2]))]
table = validate_batch(values, ZoneDirectory(ZONE).current(), datetime.now(UTC)).rows
del values
before = rss()
async def main():
    store = open_store(load_settings(data_dir=sys.argv[3], clickhouse_url=None).clickhouse)
    await migrate(store)
    opened = rss()
    for _ in range(10):
        await store.insert_arrow("cdr", table)
    print(f"{sys.argv[2]} {before:.0f} {opened:.0f} {rss():.0f}")
    await store.close()
asyncio.run(main())
"""
    print("engine probe: batch, RSS before the store, opened and migrated, after 10 inserts (MB)")
    for batch in batches:
        data = OUT / "sizing-probe-store"
        shutil.rmtree(data, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-c", code, os.path.dirname(__file__), str(batch), str(data)],
            capture_output=True,
            text=True,
            check=True,
        )
        print("  " + result.stdout.strip().splitlines()[-1])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--idle-seconds", type=float, default=12.0)
    parser.add_argument("--engine-probe", action="store_true", help="also measure the embedded engine alone")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    topic = f"bench.sizing.{args.events}"
    if args.engine_probe:
        engine_probe(args.batch_sizes)
    runs: list[Run] = []
    with kafka() as bootstrap:
        await preload(bootstrap, topic, args.events)
        idle_sample = await idle(bootstrap, topic, args.idle_seconds)
        print(
            f"idle: pod {idle_sample.pod / MIB:.0f} MB (without chdb"
            f" {idle_sample.without_chdb / MIB:.0f}), tree RSS {idle_sample.tree_rss / MIB:.0f} MB",
            flush=True,
        )
        for batch in args.batch_sizes:
            runs.append(await catch_up(bootstrap, topic, args.events, batch, idle_sample))
    print()
    print(f"machine: {machine()}; {args.events:,} events, {PARTITIONS} partitions, PBX traffic mix")
    print(
        "| batch | events/s | idle pod (without chdb) | peak pod | peak without chdb | chdb library"
        " | peak tree RSS | consumer RSS | CPU cores | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        p = r.peak
        print(
            f"| {r.batch:,} | {r.events_per_s:,.0f} | {r.idle.pod / MIB:.0f} MB"
            f" ({r.idle.without_chdb / MIB:.0f}) | {p.pod / MIB:.0f} MB | {p.without_chdb / MIB:.0f} MB"
            f" | {p.chdb / MIB:.0f} MB | {p.tree_rss / MIB:.0f} MB | {p.consumer / MIB:.0f} MB"
            f" | {r.cores:.2f} | {r.load:.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
