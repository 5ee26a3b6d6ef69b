"""A tenant's concurrency limit counts the ClickHouse reads its requests hold, not the
requests: a page with its total holds two, so one tenant paging never holds every reader."""

from __future__ import annotations

import asyncio

import httpx

from cdr.store.client import Store
from tests.api.conftest import TOKENS, Api, second_server


async def test_pages_with_their_totals_hold_two_reads_each(api: Api) -> None:
    """The one reader kept busy for ~2 s, so admitted requests wait on it holding their
    reads. With a limit of 4 reads, 4 pages at once from one tenant: 2 are admitted (4
    reads) and 2 refused at once (before, 4 requests were admitted: 8 reads, every reader
    of the default pool)."""
    one_reader = Store(api.store.dsn, database=api.store.database, read_workers=1)
    server, task, url = await second_server(api, one_reader, tenant_max_concurrent_requests=4)
    busy = asyncio.create_task(one_reader.query("SELECT sleepEachRow(0.5) FROM numbers(4) SETTINGS max_block_size = 1"))
    auth = {"Authorization": f"Bearer {TOKENS['t1.example']}"}
    try:
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client:
            pages = [client.get("/v1/cdr", params={"page": "1", "limit": "10"}) for _ in range(4)]
            # (status, the reader still busy when it came): the refusals come at once.
            codes = [((await answer).status_code, not busy.done()) for answer in asyncio.as_completed(pages)]
    finally:
        server.should_exit = True
        await task
        await one_reader.close()
    assert codes[:2] == [(429, True), (429, True)] and [code for code, _ in codes[2:]] == [200, 200], codes
