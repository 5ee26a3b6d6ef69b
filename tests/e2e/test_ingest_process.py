"""`cdr ingest` as operators run it: its ops endpoints (the chart's probes) and a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.conftest import free_port
from tests.helpers import create_topics, encoded, events, produce, unique


async def test_standalone_ingestor_serves_probes_and_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
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
        "CDR_OPS_PORT": str(port),
        "CDR_BATCH_TIME_MS": "200",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    await produce(kafka_bootstrap, topic, encoded(events(500, seed=51)))
    log = (tmp_path / "ingest.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "cdr.cli", "ingest"], env=env, stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            metrics = ""
            for _ in range(240):
                try:
                    ready = await client.get("/readyz")
                    metrics = (await client.get("/metrics")).text
                    if ready.status_code == 200 and "cdr_events_stored_total 500.0" in metrics:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise AssertionError(
                    "ingestor never stored the events: " + (tmp_path / "ingest.log").read_text()[-2000:]
                )
            health = await client.get("/healthz")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert health.json() == {"status": "ok"}
    assert ready.json()["checks"] == {"pipeline": "ok", "clickhouse_inserts": "ok"}
    assert 'cdr_consumer_lag{partition="0",topic="' + topic + '"} 0.0' in metrics
    assert code == 0, (tmp_path / "ingest.log").read_text()[-2000:]
