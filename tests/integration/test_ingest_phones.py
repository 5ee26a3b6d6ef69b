"""Through a real Kafka broker into the real engine: the ingestor stores each number's
canonical form in the tenant's phone region (the tenant directory, else
CDR_PHONE_REGION) beside the raw number, and the key table holds it."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.helpers import encoded, events, produce, stored_ids, wait_for
from tests.integration.conftest import IngestEnv


async def test_the_ingestor_stores_canonical_numbers_in_each_tenants_region(
    ingest_env: IngestEnv, tmp_path: Path
) -> None:
    settings = ingest_env.settings
    directory = tmp_path / "tenants.json"
    entries = {"us.example": {"tokens": ["0" * 64], "phone_region": "US"}}
    directory.write_bytes(orjson.dumps({"tenants": entries}))
    calls = events(4, seed=91, tenants=("us.example", "vn.example"))
    numbers = [("6502530000", "101"), ("0899888999", "84899888999"), ("+16502530000", "102"), ("101", "+84899888999")]
    for call, (from_number, to_number) in zip(calls, numbers, strict=True):
        call["from_number"], call["to_number"] = from_number, to_number

    async def stored() -> bool:
        return len(await stored_ids(ingest_env.store)) >= len(calls)

    async with ingest_env.running(tenants_file=directory):  # CDR_PHONE_REGION: VN
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(calls))
        await wait_for(stored, 60, "the calls stored")

    table = ingest_env.store.qualified("cdr")
    rows = await ingest_env.store.query(
        f"SELECT from_number, to_number, from_e164, to_e164 FROM {table} FINAL ORDER BY tenant_id, from_number"
    )
    assert rows == [
        ["+16502530000", "102", "+16502530000", "102"],
        ["6502530000", "101", "+16502530000", "101"],
        ["0899888999", "84899888999", "+84899888999", "+84899888999"],
        ["101", "+84899888999", "101", "+84899888999"],
    ]
    keys = await ingest_env.store.query(
        f"SELECT tenant_id, phone, count() FROM {ingest_env.store.qualified('cdr_key_by_phone')} FINAL"
        " GROUP BY tenant_id, phone ORDER BY tenant_id, phone"
    )
    assert keys == [
        ["us.example", "+16502530000", 2],
        ["us.example", "101", 1],
        ["us.example", "102", 1],
        ["vn.example", "+84899888999", 2],  # once for the call whose two numbers are one
        ["vn.example", "101", 1],
    ]
