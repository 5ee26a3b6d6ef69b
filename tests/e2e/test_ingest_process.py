"""`cdr ingest` as operators run it: its ops endpoints (the chart's probes) and a clean stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.api.conftest import free_port
from tests.helpers import cdr_process, encoded, events, produce, service_env


async def test_standalone_ingestor_serves_probes_and_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap, tmp_path / "store", ops_port=port, batch_time_ms=200, health_interval_ms=200
    )
    await produce(kafka_bootstrap, topic, encoded(events(500, seed=51)))
    log = tmp_path / "ingest.log"
    with cdr_process("ingest", env, log) as process:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            metrics = ""
            for _ in range(240):
                try:
                    ready = await client.get("/readyz")
                    metrics = (await client.get("/metrics")).text
                    lag = 'cdr_consumer_lag{partition="0",topic="' + topic + '"} 0.0'
                    if ready.status_code == 200 and "cdr_events_stored_total 500.0" in metrics and lag in metrics:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("ingestor never stored the events: " + log.read_text()[-2000:])
            health = await client.get("/healthz")
    assert health.json() == {"status": "ok"}
    assert ready.json()["checks"] == {
        "pipeline": "ok",
        "clickhouse_inserts": "ok",
        "kafka": "ok",
        "partitions": "4 assigned",
        "dead_letters": "ok",
        "progress": "ok",
    }
    assert 'cdr_consumer_lag{partition="0",topic="' + topic + '"} 0.0' in metrics
    assert process.returncode == 0, log.read_text()[-2000:]
