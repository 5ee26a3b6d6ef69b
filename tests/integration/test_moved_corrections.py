"""A correction that moves time_started, through a real broker, the real engine and the
real API: one record per (tenant_id, id), the newest (EVENTS.md), in every read."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import SecretStr

from cdr.api.app import create_app
from cdr.api.auth import token_digest
from cdr.metrics import Metrics
from tests.api.conftest import SECRET, TOKENS, Api, serve
from tests.api.expect import as_record
from tests.helpers import encoded, events, produce, wait_for
from tests.integration.conftest import IngestEnv

TENANT = "t1.example"


def _moved(event: dict[str, Any], *, by_s: int, emitted_after_s: float, status: str) -> dict[str, Any]:
    """Another version of the call, ``by_s`` seconds later (earlier if negative), emitted
    ``emitted_after_s`` seconds after ``event``."""

    def shift(name: str, seconds: float) -> str | None:
        value = event.get(name)
        return None if value is None else (datetime.fromisoformat(value) + timedelta(seconds=seconds)).isoformat()

    return {
        **event,
        "time_started": shift("time_started", by_s),
        "time_answered": shift("time_answered", by_s),
        "time_ended": shift("time_ended", by_s),
        "emitted_at": shift("emitted_at", emitted_after_s),
        "status": status,
        "cause": f"VERSION_{status}",
    }


async def test_a_correction_that_moves_a_call_leaves_one_record_in_every_read(ingest_env: IngestEnv) -> None:
    bootstrap, topic = ingest_env.settings.kafka.kafka_bootstrap_servers, ingest_env.settings.kafka.kafka_topic
    calls = events(12, seed=25, tenants=(TENANT,), spacing_s=600)
    apart, together = calls[0], calls[1]
    # 30 s earlier, emitted a second after the original: the case of the issue.
    apart_fixed = _moved(apart, by_s=-30, emitted_after_s=1, status="BUSY")
    together_fixed = _moved(together, by_s=-30, emitted_after_s=1, status="FAILED")
    # Stale: a version at a third time, emitted between the original and its correction.
    apart_stale = _moved(apart, by_s=45, emitted_after_s=0.5, status="NO ANSWER")
    newest = {e["id"]: e for e in calls} | {apart["id"]: apart_fixed, together["id"]: together_fixed}

    stored = ingest_env.metrics.events_stored
    # The originals, with one call's correction right behind it: one batch.
    await produce(bootstrap, topic, encoded([*calls, together_fixed]))
    async with ingest_env.running():
        await wait_for(lambda: _at_least(stored, 13), 60, "the originals stored")
        # The other correction in a batch of its own, after its original is stored.
        await produce(bootstrap, topic, encoded([apart_fixed]))
        await wait_for(lambda: _at_least(stored, 14), 60, "the correction stored")
        # Then the stale ones: both originals again, and a version at a third time.
        await produce(bootstrap, topic, encoded([apart, together, apart_stale]))
        await wait_for(lambda: _at_least(stored, 17), 60, "the stale versions stored")

    want = sorted((as_record(e) for e in newest.values()), key=lambda r: (r["time_started"], r["id"]))
    settings = ingest_env.settings.replaced(
        api_tokens=",".join(f"{t}:{token_digest(token)}" for t, token in TOKENS.items()),
        cursor_secret=SecretStr(SECRET),
    )
    server, task, url = await serve(create_app(settings.api, settings.common, ingest_env.store, Metrics()), settings)
    api = Api(url, settings, ingest_env.store)
    try:
        async with api.client(TENANT) as client:
            page = (await client.get("/v1/cdr", params={"limit": "100"})).json()
            assert page["data"] == want
            assert page["total"] == len(want)
            for fixed in (apart_fixed, together_fixed):
                found = await client.get(f"/v1/cdr/{fixed['id']}")
                assert found.status_code == 200, found.text
                assert found.json() == as_record(fixed)
            stats = (await client.get("/v1/cdr/stats", params={"group_by": "status"})).json()["data"]
            assert {s["group"]: s["calls"] for s in stats} == dict(Counter(r["status"] for r in want))
            export = await client.get("/v1/cdr/export", params={"format": "ndjson"})
            assert export.status_code == 200, export.text
            assert [orjson.loads(line) for line in export.content.splitlines()] == want
        assert await api.scroll(TENANT, {}) == want
    finally:
        server.should_exit = True
        await task


async def _at_least(counter: Any, n: int) -> bool:
    return bool(counter._value.get() >= n)
