"""The change feed end to end: events through a real broker and the ingestor into the
embedded engine, read back through the API's feed (pull, long poll, SSE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cdr.api.auth import token_digest
from cdr.metrics import Metrics
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from tests.api.conftest import SECRET, TOKENS, running_api
from tests.helpers import create_topics, encoded, events, produce, read_all, wait_for
from tests.integration.conftest import IngestEnv, make_settings


@pytest.fixture
async def feed_env(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[IngestEnv]:
    settings = make_settings(
        kafka_bootstrap,
        tmp_path / "store",
        {},
        api_tokens=",".join(f"{tenant}:{token_digest(token)}" for tenant, token in TOKENS.items()),
        cursor_secret=SECRET,
        tenant_max_concurrent_requests=1_000,
        feed_poll_interval_ms=50,
        feed_heartbeat_s=0.3,
        feed_max_streams_per_tenant=2,
    )
    await create_topics(kafka_bootstrap, settings.kafka.kafka_topic, settings.kafka.kafka_dlq_topic)
    store = open_store(settings.clickhouse)
    await migrate(store, feed_retention_days=settings.api.feed_retention_days)
    try:
        yield IngestEnv(settings, store, Metrics())
    finally:
        await store.close()


def client(url: str, tenant: str = "t1.example") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[tenant]}"}, timeout=60)


async def drain(http: httpx.AsyncClient, params: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """Every change readable now from ``params`` (a since or cursor), page by page."""
    items: list[dict[str, Any]] = []
    answer = (await http.get("/v1/cdr/changes", params=params)).json()
    items.extend(answer["data"])
    while True:
        answer = (await http.get("/v1/cdr/changes", params={"cursor": answer["cursor"], "limit": "37"})).json()
        if not answer["data"]:
            return items, answer["cursor"]
        items.extend(answer["data"])


async def stored(store: Store, n: int) -> None:
    async def enough() -> bool:
        rows = await store.query(f"SELECT count() FROM {store.qualified('cdr_changes')}")
        return int(rows[0][0]) >= n

    await wait_for(enough, 60, f"{n} changes stored")


def corrected(event: dict[str, Any], seconds: int, status: str = "ANSWERED") -> dict[str, Any]:
    """A later version of ``event`` (same id and start time)."""
    emitted = datetime.fromisoformat(event["emitted_at"]) + timedelta(seconds=seconds)
    return {**event, "status": status, "emitted_at": emitted.isoformat()}


async def test_rows_carry_their_kafka_position_and_the_feed_delivers_each_newest_version(feed_env: IngestEnv) -> None:
    settings, store = feed_env.settings, feed_env.store
    evs = events(60, seed=3, start=datetime.now(UTC) - timedelta(hours=1), spacing_s=1)
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    async with feed_env.running():
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))
        await stored(store, 60)
        # A correction of the first call, and a stale re-delivery of its first version after it.
        later = corrected(evs[0], 5, status="NO ANSWER")
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded([later, evs[0]]))
        await stored(store, 61)

    records = await read_all(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, 62)
    where = {(r.partition, r.offset): orjson.loads(r.value) for r in records}
    rows = await store.query(
        f"SELECT toString(id), toUnixTimestamp64Milli(emitted_at), source_partition, source_offset "
        f"FROM {store.qualified('cdr')}"
    )
    assert len({r[0] for r in rows}) == 60  # (versions of one key may have merged already)
    for id_, emitted_ms, partition, offset in rows:
        event = where[(partition, offset)]  # each row names its own record
        assert event["id"] == id_
        assert int(datetime.fromisoformat(event["emitted_at"]).timestamp() * 1000) == emitted_ms

    async with running_api(settings, store) as url, client(url) as http:
        items, _ = await drain(http, {"since": since, "limit": "7"})
        mine = [e for e in evs if e["tenant_id"] == "t1.example"]
        assert sorted({i["id"] for i in items}) == sorted(e["id"] for e in mine)
        first = [i for i in items if i["id"] == evs[0]["id"]]
        # The first version, the correction, never the stale re-delivery after it.
        assert [i["change"] for i in first] in (["created", "corrected"], ["corrected"])
        assert first[-1]["status"] == "NO ANSWER"
        for item in items[:5]:
            shown = (await http.get(f"/v1/cdr/{item['id']}")).json()
            if item["id"] != evs[0]["id"]:
                assert {k: v for k, v in item.items() if k not in ("version", "change")} == shown
        assert items[1]["version"].endswith("Z") and "T" in items[1]["version"]


async def test_long_poll_answers_when_a_change_arrives_and_other_tenants_never_show(feed_env: IngestEnv) -> None:
    settings, store = feed_env.settings, feed_env.store
    async with (
        feed_env.running(),
        running_api(settings, store) as url,
        client(url) as http,
        client(url, "t2.example") as two,
    ):
        start = (await http.get("/v1/cdr/changes")).json()["cursor"]
        other = (await two.get("/v1/cdr/changes")).json()["cursor"]
        waiting = asyncio.create_task(http.get("/v1/cdr/changes", params={"cursor": start, "wait": "30"}))
        theirs_polled = asyncio.create_task(two.get("/v1/cdr/changes", params={"cursor": other, "wait": "30"}))
        await asyncio.sleep(0)
        assert not waiting.done()
        # One call for t2 (never shown to t1), then one for t1.
        theirs = events(1, seed=5, tenants=("t2.example",), start=datetime.now(UTC) - timedelta(minutes=5))
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(theirs))
        published = time.monotonic()
        ours = events(1, seed=6, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(minutes=5))
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(ours))
        answer = (await waiting).json()
        # Answered with the change, well before the end of the wait.
        assert [i["id"] for i in answer["data"]] == [ours[0]["id"]]
        assert time.monotonic() - published < 30
        assert [i["id"] for i in (await theirs_polled).json()["data"]] == [theirs[0]["id"]]


async def test_the_stream_resumes_with_last_event_id_sends_heartbeats_and_limits_streams(feed_env: IngestEnv) -> None:
    settings, store = feed_env.settings, feed_env.store
    first = events(5, seed=7, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(minutes=30))
    second = events(5, seed=8, tenants=("t1.example", "t2.example"), start=datetime.now(UTC) - timedelta(minutes=20))
    async with feed_env.running(), running_api(settings, store) as url, client(url) as http:
        start = (await http.get("/v1/cdr/changes")).json()["cursor"]
        got: list[dict[str, Any]] = []
        last_id = ""
        heartbeats = 0
        async with aconnect_sse(http, "GET", "/v1/cdr/changes/stream", params={"cursor": start}) as source:
            assert source.response.status_code == 200
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(first))
            async for event in source.aiter_sse():
                got.append(orjson.loads(event.data))
                last_id = event.id
                if len(got) == 2:
                    break
        # Two streams are the limit: a third is refused while two are open.
        async with (
            aconnect_sse(http, "GET", "/v1/cdr/changes/stream") as a,
            aconnect_sse(http, "GET", "/v1/cdr/changes/stream") as b,
        ):
            assert a.response.status_code == b.response.status_code == 200
            refused = await http.get("/v1/cdr/changes/stream")
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
            assert "Retry-After" in refused.headers
        await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(second))
        resumed: list[dict[str, Any]] = []
        async with http.stream(
            "GET", "/v1/cdr/changes/stream", headers={"Last-Event-ID": last_id, "Accept": "text/event-stream"}
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    heartbeats += 1
                elif line.startswith("data:"):
                    resumed.append(orjson.loads(line[5:]))
                if len(got) + len(resumed) == 8 and heartbeats >= 2:
                    break
        ids = [i["id"] for i in got + resumed]
        wanted = [e["id"] for e in first + second if e["tenant_id"] == "t1.example"]
        assert sorted(ids) == sorted(wanted) and len(ids) == len(set(ids))
        assert heartbeats >= 2
