"""Test helpers that talk to the real broker and store (no mocks)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cdr.ingest.processor import Invalid, precheck, to_table, validate
from cdr.model.event import CallEnded
from cdr.phones import PhoneRegions, with_canonical_numbers
from cdr.simulate import make_event
from cdr.store import Store


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topics(bootstrap: str, *topics: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes | None]],
    *,
    compression: str | None = None,
    partition: int | None = None,
) -> int:
    """Send (key, value) pairs with a plain producer; returns how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_request_size=64 * 1024 * 1024,
        max_batch_size=1024 * 1024,
        compression_type=compression,
    )
    await producer.start()
    n = 0
    try:
        futures = []
        for key, value in values:
            futures.append(await producer.send(topic, value=value, key=key, partition=partition))
            n += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


async def service_env(bootstrap: str, data_dir: Path, **settings: object) -> tuple[dict[str, str], str]:
    """Environment of a `cdr` subprocess on an embedded store and fresh topics of its own;
    ``settings`` become ``CDR_<NAME>`` variables. Returns (environment, topic)."""
    topic = unique("calls")
    await create_topics(bootstrap, topic, topic + ".dlq")
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CDR_KAFKA_TOPIC": topic,
        "CDR_KAFKA_DLQ_TOPIC": topic + ".dlq",
        "CDR_KAFKA_GROUP_ID": unique("group"),
        "CDR_DATA_DIR": str(data_dir),
        **{f"CDR_{name.upper()}": str(value) for name, value in settings.items()},
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    return env, topic


@contextmanager
def cdr_process(command: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`cdr <command>` running for the block; stopped with SIGTERM after it (killed if it
    will not stop), so its exit code is in ``returncode`` afterwards."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cdr.cli", command], env=env, stdout=log, stderr=log)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise


def events(
    n: int,
    *,
    seed: int,
    tenants: tuple[str, ...] = ("t1.example", "t2.example"),
    start: datetime = datetime(2024, 5, 1, tzinfo=UTC),
    spacing_s: int = 7,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_event(rng, tenants[i % len(tenants)], start + timedelta(seconds=spacing_s * i)) for i in range(n)]


def encoded(evs: Iterable[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["id"].encode(), orjson.dumps(e)) for e in evs]


# The partition (toYYYYMM(time_started)) of the placeholder row refuse_inserts adds: no test's events.
_PLACEHOLDER_MONTH = "197001"


async def refuse_inserts(store: Store) -> None:
    """ClickHouse refuses every insert into the CDR table with a transient error (TOO_MANY_PARTS,
    code 252: a table setting, a real server condition) until ``accept_inserts``. A placeholder
    row in a month of its own gives the table the part the limit counts."""
    table = store.qualified("cdr")
    await store.command(
        f"INSERT INTO {table} (tenant_id, id, time_started, time_ended, emitted_at)"
        " VALUES ('placeholder', generateUUIDv4(), '1970-01-02 00:00:00', '1970-01-02 00:00:00', '1970-01-02 00:00:00')"
    )
    await store.command(f"ALTER TABLE {table} MODIFY SETTING max_parts_in_total = 1")


async def accept_inserts(store: Store) -> None:
    table = store.qualified("cdr")
    await store.command(f"ALTER TABLE {table} RESET SETTING max_parts_in_total")
    await store.command(f"ALTER TABLE {table} DROP PARTITION {_PLACEHOLDER_MONTH}")


async def stored_ids(store: Store) -> list[str]:
    rows = await store.query(f"SELECT toString(id) FROM {store.qualified('cdr')} FINAL")
    return [r[0] for r in rows]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """Every record of a topic (from the beginning), once ``expected`` have arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            out[p] = await consumer.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await consumer.stop()


def parse_event(value: bytes | None, zone: ZoneInfo, max_bytes: int) -> CallEnded | Invalid:
    """One message through the pipeline's two checks (precheck, then pydantic)."""
    problem = precheck(value, max_bytes)
    if problem is not None or value is None:
        return problem or Invalid("empty", "no value")
    return validate(value, zone)


async def store_events(
    store: Store, evs: list[dict[str, Any]], zone: ZoneInfo | None = None, *, canonical_numbers: bool = True
) -> None:
    """Insert events into the store's cdr table as the ingestor would (same checks, same
    Arrow columns); test data that fails a check is a ValueError. ``canonical_numbers``
    False: as before migration 0007 (no from_e164/to_e164 columns)."""
    parsed = [parse_event(value, zone or ZoneInfo("UTC"), 65_536) for _, value in encoded(evs)]
    bad = [p for p in parsed if isinstance(p, Invalid)]
    if bad:
        raise ValueError(f"test data has invalid events: {bad[:3]}")
    rows = to_table([p for p in parsed if isinstance(p, CallEnded)])
    await store.insert_arrow("cdr", with_canonical_numbers(rows, PhoneRegions()) if canonical_numbers else rows)


async def add_versions(store: Store, tenant: str, ids: list[uuid.UUID], *, emitted_s: int, first_offset: int) -> None:
    """One version of each call of ``ids`` (``tenant``'s) straight into the cdr table, with a
    place in the change feed: emitted ``emitted_s`` after a fixed moment, at partition n % 4
    and offset first_offset + n // 4."""
    await store.command(
        f"INSERT INTO {store.qualified('cdr')} (tenant_id, id, sip_call_id, cause, duration, billsec, direction,"
        " recording_url, recording_file, extension, from_number, to_number, receive_dest, time_started,"
        " time_answered, time_ended, status, emitted_at, source_partition, source_offset)"
        " SELECT {tenant:String}, ids[number + 1], 'sip', 'NORMAL_CLEARING', 60, 50, 'inbound', '', '', '101',"
        " '0901234567', '0281234567', '', toDateTime64('2026-12-01 00:00:00', 3, 'UTC'), NULL,"
        " toDateTime64('2026-12-01 00:01:00', 3, 'UTC'),"
        " 'ANSWERED', toDateTime64('2026-12-01 00:01:00', 3, 'UTC') + toIntervalSecond({emitted:UInt32}),"
        " toInt32(number % 4), toInt64({first:UInt64} + intDiv(number, 4))"
        " FROM numbers(length({ids:Array(UUID)})) AS n, (SELECT {ids:Array(UUID)} AS ids) AS given",
        {"tenant": tenant, "ids": ids, "emitted": emitted_s, "first": first_offset},
    )
