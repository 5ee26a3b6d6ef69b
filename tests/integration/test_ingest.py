"""Ingest through a real Kafka broker into a real ClickHouse engine."""

from __future__ import annotations

import gc
from typing import Any

import orjson

from cdr.ingest.dlq import (
    HEADER_ERROR,
    HEADER_KIND,
    HEADER_OFFSET,
    HEADER_ORIGINAL_SIZE,
    HEADER_PARTITION,
    HEADER_TOPIC,
)
from tests.helpers import (
    committed_offsets,
    encoded,
    events,
    produce,
    read_all,
    stored_ids,
    wait_for,
)
from tests.integration.conftest import IngestEnv

FIELDS_SQL = """
SELECT toString(id), tenant_id, sip_call_id, cause, duration, billsec, toString(direction),
       recording_url, recording_file, extension, from_number, to_number, receive_dest,
       toUnixTimestamp64Milli(time_started), toUnixTimestamp64Milli(time_answered),
       toUnixTimestamp64Milli(time_ended), status, toUnixTimestamp64Milli(emitted_at)
FROM {table} FINAL
"""


def _ms(text: str | None) -> int | None:
    from datetime import datetime

    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


async def test_50k_events_exactly_once_and_every_field_round_trips(ingest_env: IngestEnv) -> None:
    sent = events(50_000, seed=1)
    # Nulls and empty strings must survive too.
    sent[0].update(recording_url=None, receive_dest=None, extension=None, time_answered=None, sip_call_id="")
    sent[1].update(recording_url="", receive_dest="", extension="")
    await produce(
        ingest_env.settings.kafka.kafka_bootstrap_servers, ingest_env.settings.kafka.kafka_topic, encoded(sent)
    )

    async with ingest_env.running():

        async def all_stored() -> bool:
            return len(await stored_ids(ingest_env.store)) >= len(sent)

        await wait_for(all_stored, 120, "50,000 events in ClickHouse")

    rows = await ingest_env.store.query(FIELDS_SQL.format(table=ingest_env.store.qualified("cdr")))
    assert len(rows) == len(sent)
    by_id = {row[0]: row for row in rows}
    assert set(by_id) == {e["id"] for e in sent}
    for e in sent:
        row = by_id[e["id"]]
        expected = [
            e["id"],
            e["tenant_id"],
            e["sip_call_id"],
            e["cause"],
            e["duration"],
            e["billsec"],
            e["direction"],
            e["recording_url"] or "",
            (e["recording_url"] or "").rsplit("/", 1)[-1] if e["recording_url"] else "",
            e["extension"] or "",
            e["from_number"],
            e["to_number"],
            e["receive_dest"] or "",
            _ms(e["time_started"]),
            _ms(e["time_answered"]),
            _ms(e["time_ended"]),
            e["status"],
            _ms(e["emitted_at"]),
        ]
        assert [
            int(v) if isinstance(v, str) and v.isdigit() and i in (13, 14, 15, 17) else v
            for i, v in enumerate(row[1:], start=1)
        ] == expected[1:], e["id"]
    assert ingest_env.metrics.events_stored._value.get() == len(sent)


async def test_duplicates_and_corrections_collapse_to_newest(ingest_env: IngestEnv) -> None:
    sent = events(2_000, seed=2)
    corrected = []
    for e in sent[:300]:
        fixed = dict(e)
        fixed["emitted_at"] = "2025-06-01T00:00:00+00:00"  # newer than the originals, not in the future
        fixed["status"] = "FAILED"
        fixed["cause"] = "CORRECTED"
        corrected.append(fixed)
    bootstrap, topic = ingest_env.settings.kafka.kafka_bootstrap_servers, ingest_env.settings.kafka.kafka_topic
    # Old, then corrected, then the old ones again (late re-delivery must not win).
    await produce(bootstrap, topic, encoded(sent))
    await produce(bootstrap, topic, encoded(corrected))
    await produce(bootstrap, topic, encoded(sent))

    async with ingest_env.running():

        async def all_read() -> bool:
            return ingest_env.metrics.events_stored._value.get() >= 2 * len(sent) + len(corrected)

        await wait_for(all_read, 60, "every copy ingested")

    table = ingest_env.store.qualified("cdr")
    rows = await ingest_env.store.query(f"SELECT toString(id), status, cause FROM {table} FINAL")
    assert len(rows) == len(sent)
    assert len({r[0] for r in rows}) == len(sent)
    fixed_ids = {e["id"] for e in corrected}
    for id_, status, cause in rows:
        if id_ in fixed_ids:
            assert (status, cause) == ("FAILED", "CORRECTED")
        else:
            assert cause != "CORRECTED"


POISON: dict[str, bytes] = {
    "not_json": b"this is not json {",
    "json_array": b'[{"event": "call.ended"}]',
    "invalid_utf8": b'{"event": "call.ended", "tenant_id": "\xff\xfe"}',
    "too_large": b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}',
}


def _poison_events() -> dict[str, bytes]:
    base = events(1, seed=3)[0]
    broken = {
        "missing_fields": {k: v for k, v in base.items() if k not in ("tenant_id", "time_ended")},
        "wrong_types": {**base, "duration": "fifteen", "billsec": True},
        "billsec_over_duration": {**base, "duration": 10, "billsec": 11},
        "ended_before_started": {**base, "time_ended": "2000-01-01T00:00:00+00:00"},
        "unknown_schema_version": {**base, "schema_version": 2},
        "emitted_in_the_future": {**base, "emitted_at": "2099-01-01T00:00:00+00:00"},
        "unsafe_tenant_id": {**base, "tenant_id": "acme\u200b.vn"},
    }
    return {**POISON, **{name: orjson.dumps(value) for name, value in broken.items()}}


async def test_poison_messages_go_to_dlq_with_reasons_and_never_stall(ingest_env: IngestEnv) -> None:
    good = events(3_000, seed=4)
    poison = _poison_events()
    mixed: list[tuple[bytes | None, bytes | None]] = []
    good_iter = iter(encoded(good))
    for i, value in enumerate(poison.values()):
        # Poison sits between good messages of its partition; the good ones behind it must flow.
        mixed.extend([next(good_iter) for _ in range(200)])
        mixed.append((f"poison-{i}".encode(), value))
    mixed.extend(good_iter)
    settings = ingest_env.settings
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, mixed)

    async with ingest_env.running():

        async def all_stored() -> bool:
            return len(await stored_ids(ingest_env.store)) >= len(good)

        await wait_for(all_stored, 60, "every good event stored")
        dead = await read_all(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_dlq_topic, len(poison))

    assert sorted(await stored_ids(ingest_env.store)) == sorted(e["id"] for e in good)
    assert len(dead) == len(poison)
    by_value = {record.value: record for record in dead}
    expected_kind = {
        "not_json": "not_json",
        "json_array": "not_object",
        "invalid_utf8": "not_json",
        "too_large": "too_large",
        "missing_fields": "invalid_event",
        "wrong_types": "invalid_event",
        "billsec_over_duration": "invalid_event",
        "ended_before_started": "invalid_event",
        "unknown_schema_version": "unknown_schema_version",
        "emitted_in_the_future": "invalid_event",
        "unsafe_tenant_id": "invalid_event",
    }
    expected_text = {
        "missing_fields": "tenant_id",
        "wrong_types": "duration",
        "billsec_over_duration": "billsec",
        "ended_before_started": "time_ended",
        "unknown_schema_version": "schema_version",
        "too_large": "limit",
        "emitted_in_the_future": "emitted_at is later than",
        "unsafe_tenant_id": "tenant_id",
    }
    for name, value in poison.items():
        # Published unchanged, but for a message over CDR_MAX_EVENT_BYTES: its first bytes and its size.
        limit = settings.ingest.max_event_bytes
        record = by_value[value[:limit]]
        if len(value) > limit:
            assert dict(record.headers)[HEADER_ORIGINAL_SIZE] == str(len(value)).encode()
        headers = {k: v.decode() for k, v in record.headers}
        assert headers[HEADER_KIND] == expected_kind[name], name
        assert headers[HEADER_TOPIC] == settings.kafka.kafka_topic
        assert int(headers[HEADER_PARTITION]) in range(4)
        assert int(headers[HEADER_OFFSET]) >= 0
        assert headers[HEADER_ERROR], name
        if name in expected_text:
            assert expected_text[name] in headers[HEADER_ERROR], (name, headers[HEADER_ERROR])
    assert ingest_env.metrics.events_dead_lettered.labels(reason="invalid_event")._value.get() == 6


async def test_mostly_bad_partition_stops_the_ingestor_without_committing(ingest_env: IngestEnv) -> None:
    """Something systematically wrong (here: a producer sending garbage) stops ingest
    instead of dead-lettering the whole stream; nothing past it is committed."""
    settings = ingest_env.settings
    good = encoded(events(50, seed=8))
    garbage = [(b"k", b"<xml>not a call</xml>") for _ in range(400)]
    # One key: one partition, so the limit sees the whole stream.
    await produce(
        settings.kafka.kafka_bootstrap_servers,
        settings.kafka.kafka_topic,
        [(b"same-key", value) for _, value in good + garbage],
    )
    async with ingest_env.running(dlq_min_messages=100, dlq_window=200, dlq_max_ratio=0.5) as ingestor:

        async def halted() -> bool:
            return ingestor.pipeline.halted.is_set()

        await wait_for(halted, 60, "the dead-letter limit to stop the ingestor")
        ready, checks = await ingestor.ready()
    assert not ready and "halted" in checks["pipeline"]
    assert ingestor.pipeline.fatal is not None and "invalid" in ingestor.pipeline.fatal
    offsets = await committed_offsets(
        settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_group_id, settings.kafka.kafka_topic
    )
    # Whatever was committed precedes the batch that broke the limit; the rest stays for a human.
    assert sum(offsets.values()) < len(good) + len(garbage)


async def _committed_at_least(bootstrap: str, group: str, topic: str, offset: int) -> bool:
    return (await committed_offsets(bootstrap, group, topic))[0] >= offset


async def test_overlapping_batches_commit_in_order(ingest_env: IngestEnv) -> None:
    """Small batches: one is validated while the one before is written, so two are in
    flight at once; each is still stored once, and each batch's commit comes after the
    one before it (per partition, offsets committed only grow)."""
    sent = events(30_000, seed=11)
    await produce(
        ingest_env.settings.kafka.kafka_bootstrap_servers, ingest_env.settings.kafka.kafka_topic, encoded(sent)
    )
    commits: list[dict[int, int]] = []
    async with ingest_env.running(batch_size=1_500) as ingestor:
        pipeline = ingestor.pipeline
        commit = pipeline._commit

        async def recorded(consumer: Any, records: Any) -> bool:
            commits.append({r.partition: r.offset for r in records})
            return await commit(consumer, records)

        pipeline._commit = recorded  # type: ignore[method-assign]

        async def all_committed() -> bool:
            return sum(pipeline.committed.values()) >= len(sent)

        await wait_for(all_committed, 120, "30,000 events committed")
    assert sorted(await stored_ids(ingest_env.store)) == sorted(e["id"] for e in sent)
    assert len(commits) > 10
    last: dict[int, int] = {}
    for batch in commits:
        for partition, offset in batch.items():
            assert offset > last.get(partition, -1), f"partition {partition} committed {offset} after {last}"
            last[partition] = offset
    stages = {s.labels["stage"] for s in ingest_env.metrics.stage_seconds.collect()[0].samples}
    assert {"validate", "write", "commit"} <= stages


async def test_a_stored_batch_is_freed_without_waiting_for_the_garbage_collector(ingest_env: IngestEnv) -> None:
    """A batch's records go as soon as it is committed: nothing keeps FastStream's message
    in a reference cycle (a task's copy of the handler's context once did, holding ~13
    batches at full speed until a full collection). Counted with the collector off."""
    from faststream.kafka.message import KafkaAckableMessage

    sent = events(20_000, seed=12)
    await produce(
        ingest_env.settings.kafka.kafka_bootstrap_servers, ingest_env.settings.kafka.kafka_topic, encoded(sent)
    )
    gc.collect()
    gc.disable()
    try:
        async with ingest_env.running(batch_size=500) as ingestor:

            async def all_committed() -> bool:
                return sum(ingestor.pipeline.committed.values()) >= len(sent)

            await wait_for(all_committed, 120, "20,000 events committed")
            alive = sum(1 for o in gc.get_objects() if type(o) is KafkaAckableMessage)
    finally:
        gc.enable()
    assert len(await stored_ids(ingest_env.store)) == len(sent)
    assert alive <= 6, f"{alive} batch messages alive after all {len(sent) // 500}+ batches were stored"
