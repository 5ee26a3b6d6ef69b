"""Faults: the ingestor SIGKILLed mid-stream, ClickHouse failing inserts for a while or for
good, and a replica of a consumer group leaving mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from cdr.ingest.app import Ingestor, build_ingestor
from cdr.metrics import Metrics
from cdr.store import open_store
from tests.helpers import (
    accept_inserts,
    committed_offsets,
    create_topics,
    encoded,
    events,
    produce,
    read_all,
    refuse_inserts,
    stored_ids,
    wait_for,
)
from tests.integration.conftest import IngestEnv, make_settings

STEP = timedelta(seconds=7 * 2_000)  # one chunk of events(2_000) 7 s apart: chunks do not overlap in time


def _start_ingestor(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "cdr.cli", "ingest"], env=env, stdout=log, stderr=log)


@pytest.mark.slow
async def test_sigkill_at_random_moments_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = make_settings(kafka_bootstrap, tmp_path / "store", {}, batch_size=2_000)
    await create_topics(kafka_bootstrap, settings.kafka.kafka_topic, settings.kafka.kafka_dlq_topic)
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CDR_KAFKA_TOPIC": settings.kafka.kafka_topic,
        "CDR_KAFKA_DLQ_TOPIC": settings.kafka.kafka_dlq_topic,
        "CDR_KAFKA_GROUP_ID": settings.kafka.kafka_group_id,
        "CDR_DATA_DIR": str(settings.clickhouse.data_dir),
        "CDR_CLICKHOUSE_DATABASE": settings.clickhouse.clickhouse_database,
        "CDR_BATCH_SIZE": "2000",
        "CDR_BATCH_TIME_MS": "200",
        "CDR_OPS_PORT": "0",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    # Static membership: each restart takes its partitions back at once, so the test
    # spends its time ingesting rather than waiting out session timeouts.
    env["CDR_KAFKA_GROUP_INSTANCE_ID"] = "ingest-0"
    log_path = tmp_path / "ingest.log"
    # Produced in chunks until the last kill (however long restarts take), so that every
    # incarnation has something left to ingest when it is killed.
    pairs: list[tuple[bytes, bytes]] = []
    rng = random.Random(5)
    kills_done = asyncio.Event()

    async def produce_until_kills_done() -> None:
        chunk = 0
        while not kills_done.is_set():
            more = encoded(events(2_000, seed=5_000 + chunk, start=datetime(2024, 5, 1, tzinfo=UTC) + chunk * STEP))
            await produce(kafka_bootstrap, settings.kafka.kafka_topic, more)
            pairs.extend(more)
            chunk += 1
            await asyncio.sleep(0.25)

    async def committed() -> int:
        offsets = await committed_offsets(kafka_bootstrap, settings.kafka.kafka_group_id, settings.kafka.kafka_topic)
        return sum(offsets.values())

    producing = asyncio.create_task(produce_until_kills_done())
    process = _start_ingestor(env, log_path)
    kills = 0
    progress_at_kill: list[int] = []
    try:
        while kills < 6:
            # Kill at a random moment once this incarnation is really ingesting.
            before = await committed()

            async def progressed(floor: int = before) -> bool:
                return await committed() > floor

            await wait_for(progressed, 90, f"progress before kill {kills + 1}")
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            progress_at_kill.append(await committed())
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            kills += 1
            process = _start_ingestor(env, log_path)
        kills_done.set()
        await producing

        produced = len(pairs)

        async def all_committed() -> bool:
            return await committed() >= produced

        await wait_for(all_committed, 120, "the last incarnation to catch up")

        async def last_started() -> bool:
            # The incarnations share one log. The commits above may all be an earlier one's;
            # the last stops gracefully only once it runs (its SIGTERM handler is installed
            # before it logs its start; a SIGTERM during its imports ends it with -15).
            return log_path.read_text().count('"msg":"ingest started"') > kills

        await wait_for(last_started, 90, "the last incarnation to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        kills_done.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    sent = [orjson.loads(value) for _, value in pairs]

    store = open_store(settings.clickhouse)
    try:
        ids = await stored_ids(store)
    finally:
        await store.close()
    assert kills == 6
    # The kills really landed mid-stream: progress was made, and not yet finished.
    mid_stream = [p for p in progress_at_kill if 0 < p < len(sent)]
    assert len(mid_stream) >= 3, progress_at_kill
    assert progress_at_kill == sorted(progress_at_kill), progress_at_kill
    assert len(ids) == len(set(ids)) == len(sent)
    assert set(ids) == {e["id"] for e in sent}


async def test_clickhouse_outage_blocks_commits_then_recovers(ingest_env: IngestEnv) -> None:
    settings = ingest_env.settings
    store = ingest_env.store
    first = events(1_000, seed=6)
    second = events(4_000, seed=7)
    async with ingest_env.running() as ingestor:
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(first))

        async def first_stored() -> bool:
            return len(await stored_ids(store)) == len(first)

        await wait_for(first_stored, 60, "the first events")

        async def first_committed() -> bool:
            offsets = await committed_offsets(
                settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
            )
            return sum(offsets.values()) == len(first)

        await wait_for(first_committed, 30, "the first commit")

        await refuse_inserts(store)
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(second))

        async def failing() -> bool:
            return ingest_env.metrics.insert_failures._value.get() >= 3

        await wait_for(failing, 30, "inserts failing during the outage")
        ready, checks = await ingestor.ready()
        assert not ready, checks
        offsets = await committed_offsets(
            settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
        )
        assert sum(offsets.values()) == len(first), "committed during the outage"

        await accept_inserts(store)

        async def all_stored() -> bool:
            return len(await stored_ids(store)) == len(first) + len(second)

        await wait_for(all_stored, 60, "ingest to resume by itself")
        await wait_for(lambda: _ready(ingestor), 30, "ready again")

    assert set(await stored_ids(store)) == {e["id"] for e in first + second}
    offsets = await committed_offsets(
        settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
    )
    assert sum(offsets.values()) == len(first) + len(second)


async def _ready(ingestor: object) -> bool:
    ready, _ = await ingestor.ready()  # type: ignore[attr-defined]
    return ready


async def test_a_table_missing_after_the_schema_was_current_halts_ingest(ingest_env: IngestEnv) -> None:
    """The CDR table is not on the server that answers (a replica migrated without
    CDR_CLICKHOUSE_CLUSTER, or a table detached): not an outage, so ingest halts at once
    with an error naming the setting, commits nothing, and never retries."""
    settings, store = ingest_env.settings, ingest_env.store
    await store.command(f"DETACH TABLE {store.qualified('cdr')}")
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(events(200, seed=13)))
    async with ingest_env.running() as ingestor:
        await asyncio.wait_for(ingestor.pipeline.halted.wait(), 60)
        fatal = ingestor.pipeline.fatal
    assert fatal is not None and "UNKNOWN_TABLE" in fatal and "CDR_CLICKHOUSE_CLUSTER" in fatal, fatal
    assert ingest_env.metrics.insert_failures._value.get() == 0, "a missing table was retried"
    offsets = await committed_offsets(
        settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
    )
    assert sum(offsets.values()) == 0


async def test_a_schema_mismatch_halts_ingest_instead_of_retrying(ingest_env: IngestEnv) -> None:
    """A column the code writes is gone: retrying cannot help, so ingest halts with the
    ClickHouse error at once (no commit), rather than looking like an outage forever."""
    settings, store = ingest_env.settings, ingest_env.store
    # (The change feed's view reads the column: it goes first, or ClickHouse refuses the drop.)
    await store.command(f"DROP VIEW {store.qualified('cdr_changes_mv')}")
    await store.command(f"ALTER TABLE {store.qualified('cdr')} DROP COLUMN receive_dest")
    sent = events(500, seed=12)
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(sent))
    async with ingest_env.running() as ingestor:
        await asyncio.wait_for(ingestor.pipeline.halted.wait(), 60)
        fatal = ingestor.pipeline.fatal
        ready, checks = await ingestor.ready()
    assert fatal is not None and "code 16" in fatal, fatal  # NO_SUCH_COLUMN_IN_TABLE
    assert not ready and "halted" in checks["pipeline"]
    assert ingest_env.metrics.insert_failures._value.get() == 0, "a permanent error was retried"
    offsets = await committed_offsets(
        settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
    )
    assert sum(offsets.values()) == 0


async def test_rows_clickhouse_refuses_are_dead_lettered_and_the_rest_stored(ingest_env: IngestEnv) -> None:
    """A value that passes validation but the table refuses (here: an operator's CHECK
    constraint; in the wild a value out of a column's range) is about those rows, not the
    batch: they are found by splitting the batch, dead-lettered unchanged with the server's
    reason, the batch's other rows stored and the group committed past them, no halt."""
    settings, store = ingest_env.settings, ingest_env.store
    await store.command(
        f"ALTER TABLE {store.qualified('cdr')} ADD CONSTRAINT no_test_calls CHECK sip_call_id NOT LIKE 'refuse-me%'"
    )
    sent = events(600, seed=31)
    bad_at = {0, 217, 218, 599}
    for n in bad_at:
        sent[n]["sip_call_id"] = f"refuse-me-{n}@t1.example"
    produced = encoded(sent)
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, produced)
    bootstrap = settings.kafka.kafka_bootstrap_servers
    async with ingest_env.running() as ingestor:

        async def all_committed() -> bool:
            offsets = await committed_offsets(bootstrap, settings.kafka.kafka_group_id, settings.kafka.kafka_topic)
            return sum(offsets.values()) == len(sent) or ingestor.pipeline.halted.is_set()

        await wait_for(all_committed, 60, "the batch committed (or a halt)")
        assert ingestor.pipeline.fatal is None, ingestor.pipeline.fatal
        assert not ingestor.pipeline.halted.is_set()
        dead = await read_all(bootstrap, settings.kafka.kafka_dlq_topic, len(bad_at))

    good_ids = {e["id"] for n, e in enumerate(sent) if n not in bad_at}
    assert set(await stored_ids(store)) == good_ids
    assert sorted(record.value for record in dead) == sorted(produced[n][1] for n in bad_at)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["x-dlq-kind"] == "refused_by_clickhouse"
        assert "VIOLATED_CONSTRAINT" in headers["x-dlq-error"] and "no_test_calls" in headers["x-dlq-error"]
    refused = ingest_env.metrics.events_dead_lettered.labels(reason="refused_by_clickhouse")._value.get()
    assert refused == len(bad_at)
    assert ingest_env.metrics.insert_failures._value.get() == 0, "a refused value was retried as an outage"


async def test_clickhouse_refusing_most_rows_halts_instead_of_dead_lettering_them(ingest_env: IngestEnv) -> None:
    """A constraint no event meets is systematic, not a bad row here and there: past the
    dead-letter limit's share of a batch the search stops and ingest halts, committing nothing."""
    settings, store = ingest_env.settings, ingest_env.store
    await store.command(f"ALTER TABLE {store.qualified('cdr')} ADD CONSTRAINT never CHECK sip_call_id = 'none'")
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(events(400, seed=32)))
    async with ingest_env.running(dlq_min_messages=1) as ingestor:
        await asyncio.wait_for(ingestor.pipeline.halted.wait(), 60)
        fatal = ingestor.pipeline.fatal
    assert fatal is not None and "VIOLATED_CONSTRAINT" in fatal and "refused more than" in fatal, fatal
    assert ingest_env.metrics.events_dead_lettered.labels(reason="refused_by_clickhouse")._value.get() == 0
    offsets = await committed_offsets(
        settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
    )
    assert sum(offsets.values()) == 0


@pytest.mark.slow
@pytest.mark.parametrize("leaves", ["stops", "is-abandoned"])
async def test_two_ingestors_in_one_group_end_with_exactly_the_produced_ids(ingest_env: IngestEnv, leaves: str) -> None:
    """Two ingestors share the group (and, inside this process, the embedded store), as
    replicas do in production. One leaves mid-stream: with a clean stop (it drains its
    batch and leaves the group), or abandoned (static membership, no drain, no leave:
    its partitions move only when its session expires). The other ends with exactly
    the produced ids, and no committed offset ever moves backwards (a commit for a
    partition its consumer no longer owns would do that)."""
    settings = ingest_env.settings.replaced(batch_size=1_000, kafka_session_timeout_ms=6_000)
    bootstrap, topic, group = (
        settings.kafka.kafka_bootstrap_servers,
        settings.kafka.kafka_topic,
        settings.kafka.kafka_group_id,
    )
    replica_a = settings.replaced(kafka_group_instance_id="replica-a")
    a = build_ingestor(replica_a.kafka, replica_a.ingest, replica_a.common, ingest_env.store, Metrics())
    b = build_ingestor(settings.kafka, settings.ingest, settings.common, ingest_env.store, Metrics())
    sent = events(24_000, seed=21)
    pairs = encoded(sent)
    history: list[dict[int, int]] = []
    sampling = True

    async def sample_commits() -> None:
        while sampling:
            history.append(await committed_offsets(bootstrap, group, topic))
            await asyncio.sleep(0.3)

    async def produce_slowly() -> None:
        for start in range(0, len(pairs), 1_000):
            await produce(bootstrap, topic, pairs[start : start + 1_000])
            await asyncio.sleep(0.4)

    await a.start()
    await b.start()
    sampler = asyncio.create_task(sample_commits())
    producer = asyncio.create_task(produce_slowly())
    try:

        async def every_partition_progressed() -> bool:
            return all(offset > 0 for offset in (await committed_offsets(bootstrap, group, topic)).values())

        await wait_for(every_partition_progressed, 60, "both ingestors to commit")
        if leaves == "stops":
            await a.stop()
        else:
            await _abandon(a)
        await producer

        async def all_committed() -> bool:
            return sum((await committed_offsets(bootstrap, group, topic)).values()) == len(sent)

        await wait_for(all_committed, 120, "the remaining ingestor to take over and catch up")
    finally:
        sampling = False
        producer.cancel()
        await sampler
        await b.stop()
        if not a.stopping.is_set():
            await a.stop()
    ids = await stored_ids(ingest_env.store)
    assert len(ids) == len(set(ids)) == len(sent)
    assert set(ids) == {e["id"] for e in sent}
    for before, after in itertools.pairwise(history):
        assert all(after[p] >= before[p] for p in before), (before, after)
    assert b.pipeline.fatal is None


async def _abandon(ingestor: Ingestor) -> None:
    """What a crash leaves behind, inside this process: the consumer goes away without
    finishing its batch and without leaving the group (static members never send
    LeaveGroup), so the group rebalances only after its session times out."""
    ingestor.stopping.set()
    await ingestor.broker.stop()
    await ingestor.dead_letters.stop()
