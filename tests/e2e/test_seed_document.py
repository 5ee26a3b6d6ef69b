"""End to end, as a user runs it: `cdr run` (ingest + API, one process, embedded store),
the customer's document examples published to a real Kafka, read back over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson

from cdr.api.auth import token_digest
from tests.api.conftest import free_port
from tests.helpers import cdr_process, produce, service_env

DATA = Path(__file__).resolve().parents[1] / "data"
TOKEN = "dev-token-for-the-seed-test"


async def test_document_examples_round_trip_through_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap,
        tmp_path / "store",
        api_port=port,
        api_tokens=f"test.tel4vn.com:{token_digest(TOKEN)}",
        cursor_secret="s" * 40,
        batch_time_ms=200,
    )
    events = orjson.loads((DATA / "seed-document-events.json").read_bytes())
    records = orjson.loads((DATA / "seed-document-records.json").read_bytes())
    log = tmp_path / "run.log"
    with cdr_process("run", env, log) as process:
        await produce(kafka_bootstrap, topic, [(e["id"].encode(), orjson.dumps(e)) for e in events])
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        ) as client:
            for _ in range(240):
                try:
                    page = await client.get("/v1/cdr", params={"page": "1", "limit": "10"})
                    if page.status_code == 200 and page.json()["total"] == 2:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("CDRs did not appear: " + log.read_text()[-2000:])
            by_id = [await client.get(f"/v1/cdr/{r['id']}") for r in records]
            by_sip = [await client.get(f"/v1/cdr/{r['sip_call_id']}") for r in records]
            ready = await client.get("/readyz")
    assert page.json() == {"data": records, "limit": 10, "page": 1, "total": 2}
    for response, record in zip(by_id + by_sip, records + records, strict=True):
        assert response.status_code == 200
        # Same values, and the document's field order, byte for byte.
        assert response.content == orjson.dumps(record)
    assert ready.status_code == 200, ready.text
    assert process.returncode == 0, log.read_text()[-2000:]
