"""The change feed survives the API process dying (issue 27): `cdr run` is SIGKILLed while a
client follows its SSE stream and events keep arriving; the client continues its last event
id (the cursor) on a new process and is given everything it had not been given."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cdr.api.auth import token_digest
from tests.api.conftest import free_port
from tests.helpers import cdr_process, encoded, events, produce, service_env, wait_for

pytestmark = pytest.mark.kafka

TENANT, OTHER = "feed.example", "other.example"
TOKEN = "feed-token-" + "f" * 20
CALLS = 600
CHUNK = 20


async def _ready(client: httpx.AsyncClient) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return (await client.get("/v1/cdr/changes")).status_code == 200
    return False


async def _follow(client: httpx.AsyncClient, last_id: str, got: list[dict[str, Any]], ids: list[str]) -> None:
    """Follow the stream from ``last_id`` (the cursor), appending each item and its id."""
    async with aconnect_sse(client, "GET", "/v1/cdr/changes/stream", headers={"Last-Event-ID": last_id}) as source:
        assert source.response.status_code == 200
        async for event in source.aiter_sse():
            if not event.data:
                continue  # a heartbeat: httpx_sse dispatches one as an empty event (browsers do not)
            got.append(orjson.loads(event.data))
            ids.append(event.id)


async def test_a_stream_killed_with_its_process_continues_on_a_new_one_with_nothing_missed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap,
        tmp_path / "store",
        api_port=port,
        api_tokens=f"{TENANT}:{token_digest(TOKEN)},{OTHER}:{token_digest(TOKEN + 'x')}",
        cursor_secret="c" * 40,
        batch_time_ms=100,
        feed_poll_interval_ms=100,
        # Static membership: the new process takes the partitions back at once instead of
        # waiting for the killed member's session to expire.
        kafka_group_instance_id="run-0",
    )
    sent = events(CALLS, seed=27, tenants=(TENANT, OTHER), start=datetime.now(UTC) - timedelta(hours=3), spacing_s=3)
    mine = {e["id"] for e in sent if e["tenant_id"] == TENANT}
    url = f"http://127.0.0.1:{port}"
    got: list[dict[str, Any]] = []
    ids: list[str] = []
    killed = asyncio.Event()

    pairs = encoded(sent)
    after_kill = len(pairs) - 5 * CHUNK

    async def publish() -> None:
        """Chunks until the process is killed, then the rest."""
        for start in range(0, after_kill, CHUNK):
            await produce(kafka_bootstrap, topic, pairs[start : start + CHUNK])
            await asyncio.sleep(0.05)  # a steady trickle of batches, not a synchronisation
        await killed.wait()
        await produce(kafka_bootstrap, topic, pairs[after_kill:])

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        publishing: asyncio.Task[None] | None = None
        try:
            with cdr_process("run", env, tmp_path / "run-1.log") as first:
                await wait_for(lambda: _ready(client), 60, "the first process to serve")
                start = (await client.get("/v1/cdr/changes")).json()["cursor"]
                following = asyncio.create_task(_follow(client, start, got, ids))
                publishing = asyncio.create_task(publish())

                async def midway() -> bool:
                    if following.done():
                        following.result()
                    return len(got) >= 60

                await wait_for(midway, 60, "the stream to deliver a first part")
                first.kill()  # SIGKILL: no clean end of the stream, nothing flushed
                await asyncio.to_thread(first.wait)
                killed.set()
                with contextlib.suppress(httpx.HTTPError):
                    await following  # the connection breaks
            before = len(got)
            assert 0 < before < len(mine), "killed mid-stream"
            last_id = ids[-1]

            with cdr_process("run", env, tmp_path / "run-2.log") as second:
                await wait_for(lambda: _ready(client), 60, "the second process to serve")
                await publishing

                # The client comes back once everything is stored: a cursor that had lost its
                # place would start at the end and be given nothing.
                async def all_stored() -> bool:
                    page = await client.get("/v1/cdr", params={"page": "1", "limit": "1"})
                    return bool(page.json()["total"] == len(mine))

                await wait_for(all_stored, 60, "every call stored by the second process")
                resumed = asyncio.create_task(_follow(client, last_id, got, ids))

                async def everything() -> bool:
                    if resumed.done():
                        resumed.result()
                    return {item["id"] for item in got} >= mine

                try:
                    await wait_for(everything, 90, "every call of the tenant on the resumed stream")
                    # A stop ends the open stream cleanly (its client reconnects elsewhere), and
                    # the process exits within its shutdown timeout.
                    second.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(asyncio.shield(resumed), 30)
                    assert await asyncio.to_thread(second.wait, 30) == 0
                finally:
                    resumed.cancel()
                    await asyncio.gather(resumed, return_exceptions=True)
        finally:
            if publishing is not None and not publishing.done():
                publishing.cancel()
    delivered = [item["id"] for item in got]
    assert set(delivered) == mine  # nothing missed, nothing of the other tenant
    assert len(got) > before, "the new process delivered the rest"
    # At-least-once: a re-delivery carries the same (id, version), and each call has one version here.
    assert len({(item["id"], item["version"]) for item in got}) == len(mine)
