"""Times through a real Kafka broker into the real engine: naive PBX times in each tenant's
zone of the tenant directory (reloaded between batches), and implausible times dead-lettered
with the field named."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cdr.ingest.dlq import HEADER_ERROR, HEADER_KIND
from tests.helpers import encoded, events, produce, read_all, stored_ids, wait_for
from tests.integration.conftest import IngestEnv


def _directory(path: Path, zones: dict[str, str]) -> None:
    entries = {tenant: {"tokens": [f"{n:064x}"], "timezone": zone} for n, (tenant, zone) in enumerate(zones.items())}
    fresh = path.with_suffix(".new")
    fresh.write_bytes(orjson.dumps({"tenants": entries}))
    os.replace(fresh, path)  # as a Secret volume swaps its file


def _naive(tenant: str) -> dict[str, Any]:
    return {
        "event": "call.ended",
        "schema_version": 1,
        "tenant_id": tenant,
        "emitted_at": "2024-03-09 10:00:21",
        "id": str(uuid.uuid4()),
        "sip_call_id": "",
        "cause": "NORMAL_CLEARING",
        "duration": 20,
        "billsec": 15,
        "direction": "inbound",
        "from_number": "0901",
        "to_number": "0902",
        "time_started": "2024-03-09 10:00:00",
        "time_answered": "2024-03-09 10:00:05",
        "time_ended": "2024-03-09 10:00:20",
        "status": "ANSWERED",
    }


async def _started_at(env: IngestEnv) -> dict[str, datetime]:
    rows = await env.store.query(
        f"SELECT toString(id), toUnixTimestamp64Milli(time_started) FROM {env.store.qualified('cdr')} FINAL"
    )
    return {id_: datetime.fromtimestamp(ms / 1000, UTC) for id_, ms in rows}


async def test_naive_times_are_read_in_each_tenants_zone_and_a_reload_applies_to_the_next_batch(
    ingest_env: IngestEnv, tmp_path: Path
) -> None:
    settings = ingest_env.settings
    directory = tmp_path / "tenants.json"
    _directory(directory, {"ny.example": "America/New_York"})
    first = [_naive("ny.example"), _naive("other.example"), _naive("tokyo.example")]
    second = [_naive("ny.example"), _naive("other.example"), _naive("tokyo.example")]

    async def stored(n: int) -> bool:
        return len(await stored_ids(ingest_env.store)) >= n

    async with ingest_env.running(tenants_file=directory):  # CDR_TIMEZONE: Asia/Ho_Chi_Minh
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(first))
        await wait_for(lambda: stored(3), 60, "the first batch stored")
        _directory(directory, {"ny.example": "America/New_York", "tokyo.example": "Asia/Tokyo"})
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(second))
        await wait_for(lambda: stored(6), 60, "the second batch stored")

    started = await _started_at(ingest_env)
    est, hcm, jst = (datetime(2024, 3, 9, h, tzinfo=UTC) for h in (15, 3, 1))
    assert [started[e["id"]] for e in first] == [est, hcm, hcm]  # tokyo.example not listed yet
    assert [started[e["id"]] for e in second] == [est, hcm, jst]


def _implausible() -> dict[str, bytes]:
    base = events(1, seed=11)[0] | {"time_answered": None, "billsec": 0, "duration": 20}

    def call(started: str, ended: str, **changes: Any) -> bytes:
        return orjson.dumps(base | {"id": str(uuid.uuid4()), "time_started": started, "time_ended": ended} | changes)

    return {
        "time_started: 1850-01-01": call("1850-01-01T00:00:00Z", "1850-01-01T00:00:20Z"),
        "time_started: 1899-12-31": call("1899-12-31T23:59:40Z", "1899-12-31T23:59:59Z"),
        "time_ended: 2350-01-01": call("2024-05-01T00:00:00Z", "2350-01-01T00:00:00Z"),
        "emitted_at: 1899-12-31": call(
            "2024-05-01T00:00:00Z", "2024-05-01T00:00:20Z", emitted_at="1899-12-31 23:00:00"
        ),
        "longer than a call may last": call("1901-01-01T00:00:00Z", "2077-01-01T00:00:20Z"),
        "duration (20) is shorter than time_ended - time_started (86400 s)": call(
            "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"
        ),
    }


async def test_implausible_times_are_dead_lettered_naming_the_field(ingest_env: IngestEnv) -> None:
    settings = ingest_env.settings
    good = events(500, seed=12)
    bad = _implausible()
    messages = encoded(good) + [(b"bad", value) for value in bad.values()]
    await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, messages)

    async with ingest_env.running():

        async def all_stored() -> bool:
            return len(await stored_ids(ingest_env.store)) >= len(good)

        await wait_for(all_stored, 60, "every plausible call stored")
        dead = await read_all(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_dlq_topic, len(bad))

    assert sorted(await stored_ids(ingest_env.store)) == sorted(e["id"] for e in good)
    errors = {record.value: {k: v.decode() for k, v in record.headers} for record in dead}
    assert set(errors) == set(bad.values())
    for text, value in bad.items():
        assert errors[value][HEADER_KIND] == "invalid_event"
        assert text in errors[value][HEADER_ERROR], (text, errors[value][HEADER_ERROR])
