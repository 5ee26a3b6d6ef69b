"""End to end, as a user runs it: `cdr run` (ingest + API, one process, embedded store),
the customer's document examples published to a real Kafka, read back over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from cdr.settings import token_digest
from tests.api.conftest import free_port
from tests.helpers import create_topics, produce, unique

DATA = Path(__file__).resolve().parents[1] / "data"
TOKEN = "dev-token-for-the-seed-test"


async def test_document_examples_round_trip_through_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique("calls")
    await create_topics(kafka_bootstrap, topic, topic + ".dlq")
    port = free_port()
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CDR_KAFKA_TOPIC": topic,
        "CDR_KAFKA_DLQ_TOPIC": topic + ".dlq",
        "CDR_KAFKA_GROUP_ID": unique("group"),
        "CDR_DATA_DIR": str(tmp_path / "store"),
        "CDR_API_PORT": str(port),
        "CDR_API_TOKENS": f"test.tel4vn.com:{token_digest(TOKEN)}",
        "CDR_CURSOR_SECRET": "s" * 40,
        "CDR_BATCH_TIME_MS": "200",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    events = orjson.loads((DATA / "seed-document-events.json").read_bytes())
    records = orjson.loads((DATA / "seed-document-records.json").read_bytes())
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "cdr.cli", "run"], env=env, stdout=log, stderr=log)
    try:
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
                raise AssertionError("CDRs did not appear: " + (tmp_path / "run.log").read_text()[-2000:])
            by_id = [await client.get(f"/v1/cdr/{r['id']}") for r in records]
            by_sip = [await client.get(f"/v1/cdr/{r['sip_call_id']}") for r in records]
            ready = await client.get("/readyz")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert page.json() == {"data": records, "limit": 10, "page": 1, "total": 2}
    for response, record in zip(by_id + by_sip, records + records, strict=True):
        assert response.status_code == 200
        # Same values, and the document's field order, byte for byte.
        assert response.content == orjson.dumps(record)
    assert ready.status_code == 200, ready.text
    assert code == 0, (tmp_path / "run.log").read_text()[-2000:]
