"""The production commands one after another, as an operator runs them: create-topics,
migrate (twice: idempotent), simulate, ingest, then api over what was ingested. The
store is chosen by CDR_CLICKHOUSE_URL=chdb:///… (one process owns the folder at a time)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

from cdr.api.auth import token_digest
from tests.api.conftest import free_port
from tests.helpers import cdr_process, service_env

TOKEN = "operator-token-" + "k" * 20
TENANT = "ops.example"


def _cdr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdr.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_commands_from_topics_to_api(kafka_bootstrap: str, tmp_path: Path) -> None:
    env, _ = await service_env(kafka_bootstrap, tmp_path / "unused", batch_time_ms=200)
    topic = env["CDR_KAFKA_TOPIC"] + "-own"
    port, ops_port = free_port(), free_port()
    env.update(
        CDR_KAFKA_TOPIC=topic,
        CDR_KAFKA_DLQ_TOPIC=topic + ".dlq",
        CDR_CLICKHOUSE_URL=f"chdb://{tmp_path / 'store'}",
        CDR_API_PORT=str(port),
        CDR_OPS_PORT=str(ops_port),
        CDR_API_TOKENS=f"{TENANT}:{token_digest(TOKEN)}",
        CDR_CURSOR_SECRET="operator-cursor-secret-" + "s" * 16,
    )
    helped = _cdr("--help", env=env)
    assert helped.returncode == 0 and "chdb:///" in helped.stdout and "http(s)://" in helped.stdout

    for step in (["create-topics"], ["migrate"], ["migrate"], ["simulate", "--count", "300", "--rate", "2000"]):
        done = _cdr(*step, "--tenants", TENANT, env=env) if step[0] == "simulate" else _cdr(*step, env=env)
        assert done.returncode == 0, (step, done.stderr[-2000:])
    assert (tmp_path / "store").is_dir() and not (tmp_path / "unused").exists()

    with cdr_process("ingest", env, tmp_path / "ingest.log") as ingest:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}", timeout=5) as client:
            for _ in range(240):
                try:
                    if "cdr_events_stored_total 300.0" in (await client.get("/metrics")).text:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise AssertionError((tmp_path / "ingest.log").read_text()[-2000:])
    assert ingest.returncode == 0

    with cdr_process("api", env, tmp_path / "api.log") as api:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=5) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}", timeout=5) as ops,
        ):
            for _ in range(240):
                try:
                    if (await ops.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            page = (await client.get("/v1/cdr", params={"page": "1", "limit": "5"})).json()
            first = page["data"][0]
            by_id = (await client.get(f"/v1/cdr/{first['id']}")).json()
            # Operational routes live on the ops port only: an Ingress on the API port cannot publish them.
            public = [(await client.get(path)).status_code for path in ("/metrics", "/readyz")]
            scraped = (await ops.get("/metrics")).text
    assert public == [404, 404]
    assert 'cdr_http_requests_total{route="/v1/cdr",status="200"}' in scraped
    assert page["total"] == 300 and len(page["data"]) == 5
    assert by_id == first
    assert api.returncode == 0, (tmp_path / "api.log").read_text()[-2000:]
