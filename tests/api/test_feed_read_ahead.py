"""Pull pages served from what the page before read ahead (``cdr.api.feed.ReadAhead``), on a
real engine over HTTP: while corrections and re-deliveries are stored between the pages, the
reader still gets every call, never a version after a newer one, and ends with the newest."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cdr.api.cursor import CursorCodec
from cdr.metrics import Metrics
from cdr.settings import Settings
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from tests.api.conftest import SECRET, TOKENS, api_settings, running_api
from tests.helpers import add_versions

TENANT = "t1.example"
FIRST = "2026-12-01T00:01:00.000Z"  # add_versions' emitted_s=0
CORRECTED = "2026-12-01T00:02:40.000Z"  # emitted_s=100


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Settings, Store]]:
    settings = api_settings(tmp_path / "store")
    store = open_store(settings.clickhouse)
    await migrate(store)
    try:
        yield settings, store
    finally:
        await store.close()


@pytest.fixture
async def served(opened: tuple[Settings, Store]) -> AsyncIterator[tuple[str, Store, Metrics]]:
    settings, store = opened
    metrics = Metrics()
    async with running_api(settings, store, metrics) as url:
        yield url, store, metrics


async def test_pages_read_ahead_stay_complete_and_in_order_while_corrections_arrive(
    served: tuple[str, Store, Metrics],
) -> None:
    """Two readers of the tenant, at their own pace (their runs must not mix)."""
    url, store, metrics = served
    ids = [uuid.uuid4() for _ in range(200)]
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await add_versions(store, TENANT, ids, emitted_s=0, first_offset=0)
    corrected = ids[::7]
    readers: list[Reader] = []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[TENANT]}"}) as http:
        for limits in ([5, 3, 11], [2, 7]):
            reader = Reader(http, {"since": since}, itertools.cycle(limits))
            await reader.page()
            readers.append(reader)
        # Between the first pages (their reads read ahead) and the next: corrections of calls
        # delivered, kept ahead and not read yet, and first versions stored again later
        # (some of corrected calls: stale by now).
        await add_versions(store, TENANT, corrected, emitted_s=100, first_offset=1_000)
        await add_versions(store, TENANT, ids[1::9], emitted_s=0, first_offset=2_000)
        for _ in range(1_000):
            if not any([await reader.page() for reader in readers if not reader.done]):
                break
        else:
            pytest.fail("the feed never came to its end")

    assert (metrics.registry.get_sample_value("cdr_feed_pages_total", {"source": "read_ahead"}) or 0) > 50
    for reader in readers:
        given: dict[str, list[str]] = defaultdict(list)
        for item in reader.delivered:
            given[item["id"]].append(item["version"])
        assert set(given) == {str(i) for i in ids}
        for id_, versions in given.items():
            assert versions == sorted(versions), (id_, versions)
        newest = {item["id"]: item for item in reader.delivered}
        for id_ in ids:
            item = newest[str(id_)]
            if id_ in corrected:
                assert (item["version"], item["change"]) == (CORRECTED, "corrected"), item
            else:
                assert (item["version"], item["change"]) == (FIRST, "created"), item


async def test_a_drain_waits_for_a_read_of_its_own_at_its_first_page_only(
    served: tuple[str, Store, Metrics],
) -> None:
    """Pages of 2 read runs of 16 changes: each run after the one the reader takes pages
    from is read ahead of it, so only the first two pages begin with a read of their own
    (the first has no cursor of this replica yet), and the last (empty) one may; without
    the run read ahead, every 8th page would."""
    url, store, metrics = served
    ids = [uuid.uuid4() for _ in range(400)]
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await add_versions(store, TENANT, ids, emitted_s=0, first_offset=0)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[TENANT]}"}) as http:
        reader = Reader(http, {"since": since}, itertools.repeat(2))
        while await reader.page():
            assert len(reader.delivered) <= len(ids)
    assert [item["id"] for item in reader.delivered] == [str(i) for i in _in_feed_order(ids)]
    pages = {
        source: metrics.registry.get_sample_value("cdr_feed_pages_total", {"source": source})
        for source in ("read_ahead", "store")
    }
    assert pages["store"] <= 3 and pages["read_ahead"] >= 198, pages


async def test_pages_spread_over_replicas_are_not_read_ahead(opened: tuple[Settings, Store]) -> None:
    """A load balancer that sends each request to another replica: a replica continuing a
    cursor another one issued reads the page only (what it read ahead would mostly never be
    asked for), and the reader gets the same pages."""
    settings, store = opened
    ids = [uuid.uuid4() for _ in range(100)]
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await add_versions(store, TENANT, ids, emitted_s=0, first_offset=0)
    replicas = [Metrics(), Metrics()]
    headers = {"Authorization": f"Bearer {TOKENS[TENANT]}"}
    async with (
        running_api(settings, store, replicas[0]) as one_url,
        running_api(settings, store, replicas[1]) as other_url,
        httpx.AsyncClient(base_url=one_url, headers=headers) as one,
        httpx.AsyncClient(base_url=other_url, headers=headers) as other,
    ):
        reader = Reader(one, {"since": since}, itertools.repeat(3))
        turn = itertools.cycle([other, one])
        while await reader.page():
            reader.http = next(turn)
    assert [item["id"] for item in reader.delivered] == [str(i) for i in _in_feed_order(ids)]
    for metrics in replicas:
        assert metrics.registry.get_sample_value("cdr_feed_read_ahead_changes") == 0  # nothing read ahead
        assert metrics.registry.get_sample_value("cdr_feed_pages_total", {"source": "read_ahead"}) == 0
        assert (metrics.registry.get_sample_value("cdr_feed_pages_total", {"source": "store"}) or 0) >= 17


async def test_a_filter_that_matches_nothing_gets_pages_a_read_long_not_one_request_to_the_end(
    served: tuple[str, Store, Metrics],
) -> None:
    """Each page goes through about a read's worth of changes (16 here) and answers, emptier,
    with its cursor: a request never chains the runs read ahead through the whole backlog."""
    url, store, _ = served
    ids = [uuid.uuid4() for _ in range(400)]
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await add_versions(store, TENANT, ids, emitted_s=0, first_offset=0)  # every one ANSWERED
    codec = CursorCodec(SECRET.encode(), ttl_s=3600)
    end = {partition: 99 for partition in range(4)}
    requests = 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[TENANT]}"}) as http:
        params = {"since": since, "status": "NO ANSWER", "limit": "2"}
        while True:
            answer = await http.get("/v1/cdr/changes", params=params)
            requests += 1
            assert answer.status_code == 200 and answer.json()["data"] == [], answer.text
            cursor = answer.json()["cursor"]
            if codec.decode_feed(cursor, tenant=TENANT, now=int(time.time())).offsets == end:
                break
            params = {"cursor": cursor, "limit": "2"}
            assert requests < 1_000
    assert requests >= 400 // 32, requests


def _in_feed_order(ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """add_versions' calls in (partition, offset) order: call n at partition n % 4."""
    return [ids[n] for partition in range(4) for n in range(partition, len(ids), 4)]


class Reader:
    """A client paging through the feed with the given limits, in turn."""

    def __init__(self, http: httpx.AsyncClient, start: dict[str, str], limits: Iterator[int]) -> None:
        self.http = http
        self.params = start
        self.limits = limits
        self.delivered: list[dict[str, str]] = []
        self.done = False

    async def page(self) -> bool:
        """One page; False once the feed is at its end."""
        answer = await self.http.get("/v1/cdr/changes", params=self.params | {"limit": str(next(self.limits))})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        self.delivered.extend(body["data"])
        self.params = {"cursor": body["cursor"]}
        self.done = not body["data"]
        return not self.done
