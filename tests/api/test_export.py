"""GET /v1/cdr/export against the real stack: record for record what a scroll of the same
filters returns, in both formats, over 100,000+ CDRs; headers, BOM and file name; one
export per tenant at a time and a cap per replica, the slot given back when the client
goes away; keyset windows of a bounded number of records, however the calls spread."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from cdr.store import Store, client, open_store
from cdr.store.client import Param
from tests.api.conftest import TOKENS, Api, second_server
from tests.helpers import events

BULK = "t3.example"
BULK_SIZE = 100_500
# 600 calls of each tenant on one day of their own: exports of a few small windows.
SPREAD_DAY = {"start_date": "2021-06-01", "end_date": "2021-06-02", "format": "ndjson"}
SPREAD_SIZE = 600


@pytest.fixture(scope="module")
async def bulk(api: Api) -> Api:
    for start in range(0, BULK_SIZE, 20_100):
        await api.insert(events(20_100, seed=700 + start, tenants=(BULK,), spacing_s=3))
    return api


@pytest.fixture(scope="module")
async def spread(api: Api) -> Api:
    await api.insert(events(3 * SPREAD_SIZE, seed=760, tenants=tuple(TOKENS), start=datetime(2021, 6, 1, tzinfo=UTC)))
    return api


async def _export(api: Api, tenant: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    async with api.client(tenant) as client:
        response = await client.get("/v1/cdr/export", params=params)
    assert response.status_code == 200, response.text
    return response.content, dict(response.headers)


def _as_csv_row(record: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in record.items()}


@pytest.mark.parametrize("params", [{}, {"status": "ANSWERED", "order": "desc"}], ids=["all", "answered-desc"])
async def test_an_export_is_the_scroll_record_for_record(bulk: Api, params: dict[str, str]) -> None:
    want = await bulk.scroll(BULK, params)
    assert len(want) >= (BULK_SIZE if not params else 10_000)

    body, headers = await _export(bulk, BULK, {**params, "format": "ndjson"})
    assert headers["content-type"] == "application/x-ndjson"
    assert [orjson.loads(line) for line in body.splitlines()] == want

    body, headers = await _export(bulk, BULK, {**params, "bom": "true"})
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert rows == [_as_csv_row(r) for r in want]


async def test_csv_header_file_name_and_vietnamese_text(api: Api) -> None:
    tenant = "t2.example"
    text = 'Phòng kinh doanh, "Hà Nội"'  # a comma and quotes as well: quoted per RFC 4180
    await api.insert([{**e, "receive_dest": text} for e in events(3, seed=731, tenants=(tenant,))])
    body, headers = await _export(api, tenant, {"format": "CSV"})
    assert not body.startswith(b"\xef\xbb\xbf")
    lines = body.decode().split("\r\n")
    assert lines[0].split(",")[:3] == ["id", "sip_call_id", "cause"]
    assert sum(text in row["receive_dest"] for row in csv.DictReader(io.StringIO(body.decode(), newline=""))) == 3
    disposition = headers["content-disposition"]
    assert disposition.startswith('attachment; filename="cdr-t2.example-') and disposition.endswith('.csv"')


async def test_bad_export_parameters_name_themselves(api: Api) -> None:
    cases = {"format": "xml", "bom": "maybe", "status": "", "start_date": "2024-13-01", "phone_prefix": "+"}
    async with api.client() as client:
        for name, value in cases.items():
            response = await client.get("/v1/cdr/export", params={name: value})
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["param"] == name


async def test_one_export_per_tenant_and_the_slot_comes_back_when_the_client_leaves(bulk: Api) -> None:
    async with bulk.client(BULK) as client:
        async with client.stream("GET", "/v1/cdr/export", params={"format": "ndjson"}) as running:
            assert running.status_code == 200
            async for _ in running.aiter_bytes():
                break  # the export is under way; this client reads no further
            second = await client.get("/v1/cdr/export")
            assert second.status_code == 429 and second.headers["Retry-After"]
            # The list API is not starved by it.
            assert (await client.get("/v1/cdr", params={"limit": "5"})).status_code == 200
        # Left mid-stream: the reads stop and the slot is free again.
        for _ in range(50):
            again = await client.get("/v1/cdr/export", params={"status": "BUSY", "format": "ndjson"})
            if again.status_code == 200:
                break
        assert again.status_code == 200
    async with bulk.client("t1.example") as other:
        assert (await other.get("/v1/cdr/export")).status_code == 200  # slots are per tenant


async def test_an_export_is_gzip_compressed_only_for_a_client_that_asks(api: Api) -> None:
    import gzip

    async with api.client("t1.example") as client:
        plain = await client.get("/v1/cdr/export", params={"format": "ndjson"}, headers={"Accept-Encoding": "identity"})
        async with client.stream(
            "GET", "/v1/cdr/export", params={"format": "ndjson"}, headers={"Accept-Encoding": "gzip"}
        ) as packed:
            raw = b"".join([chunk async for chunk in packed.aiter_raw()])
    assert "content-encoding" not in plain.headers and plain.content.count(b"\n") > 100
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == plain.content and len(raw) < len(plain.content) / 3


class CountingStore(Store):
    """The test store, counting the records of every streamed (export) read, and whose."""

    def __init__(self, api: Api) -> None:
        super().__init__(api.store.dsn, database=api.store.database)
        self.read_sizes: list[int] = []
        self.readers: list[Param] = []  # the tenant of each read

    async def stream_formatted(self, sql: str, params: Mapping[str, Param], fmt: str) -> AsyncGenerator[bytes, None]:
        self.read_sizes.append(0)
        self.readers.append(params["tenant"])
        at = len(self.read_sizes) - 1
        async for piece in super().stream_formatted(sql, params, fmt):
            self.read_sizes[at] += piece.count(b"\n")
            yield piece

    def sizes_of(self, tenant: str) -> list[int]:
        return [size for size, reader in zip(self.read_sizes, self.readers, strict=True) if reader == tenant]


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_an_hour_busier_than_a_window_is_exported_once_in_order_in_bounded_reads(api: Api, order: str) -> None:
    """2,000 calls in one hour, 700 of them in the same millisecond (ties broken by id),
    exported with windows of 150 records: every call once, in list order, and no read
    returns more than a window (an hour was never split before: one read of 2,000)."""
    tenant, window = "t2.example", 150
    busy = datetime(2023, 3, 5, 10, tzinfo=UTC)
    await api.insert(
        events(700, seed=741, tenants=(tenant,), start=busy, spacing_s=0)
        + events(1_300, seed=742, tenants=(tenant,), start=busy, spacing_s=2)
    )
    want = await api.scroll(tenant, {"order": order})
    ids = [r["id"] for r in want]
    assert len(ids) == len(set(ids)) >= 2_000 + 800  # the busy hour and the fixture's calls

    counting = CountingStore(api)
    server, task, url = await second_server(api, counting, export_window_rows=window)
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[tenant]}"}) as client:
            response = await client.get("/v1/cdr/export", params={"format": "ndjson", "order": order}, timeout=60)
    finally:
        server.should_exit = True
        await task
        await counting.close()
    assert response.status_code == 200, response.text
    assert [orjson.loads(line) for line in response.content.splitlines()] == want
    assert max(counting.read_sizes) == window, counting.read_sizes
    assert sum(counting.read_sizes) == len(want)


async def test_a_replica_runs_at_most_its_cap_of_exports(bulk: Api) -> None:
    """With a cap of one export per replica, a second tenant's export is refused with the
    API's JSON 429 and a Retry-After while the first streams, and served once it ends."""
    server, task, url = await second_server(bulk, max_concurrent_exports=1)
    try:
        async with (
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[BULK]}"}) as first,
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS['t1.example']}"}) as other,
        ):
            async with first.stream("GET", "/v1/cdr/export", params={"format": "ndjson"}) as running:
                assert running.status_code == 200
                async for _ in running.aiter_bytes():
                    break  # under way; read no further
                refused = await other.get("/v1/cdr/export")
                assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
                assert refused.json()["error"]["code"] == "rate_limited", refused.text
                assert (await other.get("/v1/cdr", params={"limit": "5"})).status_code == 200
            for _ in range(50):  # the slot comes back when the first client leaves
                again = await other.get("/v1/cdr/export", params={"status": "BUSY"})
                if again.status_code == 200:
                    break
            assert again.status_code == 200
    finally:
        server.should_exit = True
        await task


async def test_a_streaming_export_holds_one_of_its_tenants_reads(bulk: Api) -> None:
    """With a limit of two reads, a tenant streaming an export has one left: a page with
    its total (two reads) is refused, a scroll batch (one) is served."""
    server, task, url = await second_server(bulk, tenant_max_concurrent_requests=2)
    try:
        async with (
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[BULK]}"}) as client,
            client.stream("GET", "/v1/cdr/export", params={"format": "ndjson"}) as running,
        ):
            assert running.status_code == 200
            async for _ in running.aiter_bytes():
                break  # under way; read no further
            page = await client.get("/v1/cdr", params={"page": "1", "limit": "5"})
            scroll = await client.get("/v1/cdr", params={"limit": "5"})
    finally:
        server.should_exit = True
        await task
    assert page.status_code == 429 and page.json()["error"]["code"] == "rate_limited", page.text
    assert scroll.status_code == 200, scroll.text


class EngineReads:
    """Wraps the store's streamed read on its worker (``_stream``): counts the reads in the
    engine at once and keeps the most. Each read waits, up to a moment, for one read more
    than ``bound`` to be in the engine with it, so that unbounded reads would overlap."""

    def __init__(self, real: Callable[..., None], bound: int) -> None:
        self._real, self._bound = real, bound
        self._changed = threading.Condition()
        self.now = self.most = 0

    def __call__(self, *args: Any) -> None:
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.now > self._bound, timeout=0.3)
        try:
            self._real(*args)
        finally:
            with self._changed:
                self.now -= 1


async def test_export_reads_in_the_engine_never_exceed_the_bound(spread: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four exports at once (two of one tenant) on a store opened with CDR_EXPORT_READERS=3:
    at most three window reads are ever in the engine together (each read waits for a
    fourth to join it, which eight read workers would let in); every export is whole."""
    reads = EngineReads(client._stream, bound=3)
    monkeypatch.setattr(client, "_stream", reads)
    want = {tenant: len(await spread.scroll(tenant, SPREAD_DAY)) for tenant in TOKENS}
    assert all(n == SPREAD_SIZE for n in want.values()), want
    bounded = open_store(spread.settings.replaced(export_readers=3).clickhouse)
    server, task, url = await second_server(
        spread, bounded, export_window_rows=400, export_min_window_rows=100, tenant_max_concurrent_exports=2
    )

    async def export(tenant: str) -> int:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[tenant]}"}) as http:
            response = await http.get("/v1/cdr/export", params=SPREAD_DAY, timeout=60)
        assert response.status_code == 200, response.text
        ids = [orjson.loads(line)["id"] for line in response.content.splitlines()]
        assert len(set(ids)) == len(ids)
        return len(ids)

    tenants = [*TOKENS, BULK]
    try:
        got = await asyncio.gather(*(export(tenant) for tenant in tenants))
    finally:
        server.should_exit = True
        await task
        await bounded.close()
    assert got == [want[tenant] for tenant in tenants]
    assert reads.most == 3  # reached (they do overlap), never passed


async def test_windows_shrink_as_exports_share_the_window_budget(spread: Api, bulk: Api) -> None:
    """CDR_EXPORT_WINDOW_ROWS=400 shared by the exports in progress, at least 150: one
    export alone reads 600 calls as 400 + 200; the same export while three others are in
    progress (100,500 records each, their clients reading nothing) reads windows of 150
    (400 / 4 = 100, raised to the floor); the held exports keep no reader from it."""
    counting = CountingStore(spread)
    server, task, url = await second_server(
        spread, counting, export_window_rows=400, export_min_window_rows=150, tenant_max_concurrent_exports=3
    )

    def http(tenant: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[tenant]}"}, timeout=30)

    async def export_t1() -> list[int]:
        before = len(counting.sizes_of("t1.example"))
        async with http("t1.example") as client_t1:
            response = await client_t1.get("/v1/cdr/export", params=SPREAD_DAY)
        assert response.status_code == 200, response.text
        assert response.content.count(b"\n") == SPREAD_SIZE
        return counting.sizes_of("t1.example")[before:]

    try:
        assert await export_t1() == [400, 200]
        whole = {"format": "ndjson"}  # ~50 MB each: far more than the sockets take unread
        async with (
            http(BULK) as c2,
            http(BULK) as c3,
            http(BULK) as c4,
            c2.stream("GET", "/v1/cdr/export", params=whole) as held2,
            c3.stream("GET", "/v1/cdr/export", params=whole) as held3,
            c4.stream("GET", "/v1/cdr/export", params=whole) as held4,
        ):
            assert held2.status_code == held3.status_code == held4.status_code == 200
            assert await export_t1() == [150, 150, 150, 150]
        # The held exports ended with their clients: one alone reads whole windows again.
        assert await export_t1() == [400, 200]
    finally:
        server.should_exit = True
        await task
        await counting.close()
