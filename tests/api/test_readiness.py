"""API readiness means "this process can serve" (issue 25, item 10): not ready until it
has seen the schema current; after that a ClickHouse outage leaves it ready (the
Service keeps its endpoints, requests answer the API's JSON 503 with Retry-After), and
store health goes to ``cdr_store_up``."""

from __future__ import annotations

import httpx
import pytest

from cdr.api.app import api_ops_app, create_app
from cdr.metrics import Metrics
from cdr.store import open_store
from cdr.store.migrations import migrate
from tests.api.conftest import TOKENS, api_settings, serve


async def test_ready_once_the_schema_is_current_and_still_ready_when_clickhouse_goes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = api_settings(tmp_path_factory.mktemp("readiness"))
    store = open_store(settings.clickhouse)
    metrics = Metrics()
    server, task, url = await serve(create_app(settings.api, settings.common, store, metrics), settings)
    headers = {"Authorization": f"Bearer {TOKENS['t1.example']}"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            before = await client.get("/readyz")
            await migrate(store)
            after = await client.get("/readyz")
            await store.close()  # ClickHouse gone, as far as this process can tell
            down = await client.get("/readyz")
            scraped = (await client.get("/metrics")).text
            answer = await client.get("/v1/cdr", params={"limit": "5"}, headers=headers)
    finally:
        server.should_exit = True
        await task
    assert before.status_code == 503
    assert before.json()["checks"]["schema"].startswith("waiting for `cdr migrate` (missing 0001_create_cdr")
    assert after.status_code == 200 and after.json()["checks"] == {"clickhouse": "ok", "schema": "current"}
    assert down.status_code == 200, down.text
    assert down.json()["checks"]["clickhouse"] == "unreachable (requests answer 503 until it is back)"
    assert "cdr_store_up 0.0" in scraped and "cdr_ready 1.0" in scraped
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "unavailable", answer.text


async def test_the_api_ops_port_follows_the_same_rule(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`cdr api` serves /readyz on its ops port (the chart's probe)."""
    settings = api_settings(tmp_path_factory.mktemp("ops-readiness"))
    store = open_store(settings.clickhouse)
    metrics = Metrics()
    server, task, url = await serve(api_ops_app(store, metrics), settings)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
            await migrate(store)
            assert (await probe.get("/readyz")).status_code == 200
            await store.close()
            down = await probe.get("/readyz")
    finally:
        server.should_exit = True
        await task
    assert down.status_code == 200 and down.json()["checks"]["clickhouse"].startswith("unreachable")
    assert metrics.registry.get_sample_value("cdr_store_up") == 0
