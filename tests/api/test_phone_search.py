"""The phone search equals plain Python's filtering of the scroll, for every form of a
number, on calls stored before migration 0007 (raw numbers, backfilled into the key
table) and after it (canonical numbers, the view), through the key table's limited
reads: a busy number, a second filter, and keys a correction left stale."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cdr.api import routes
from cdr.api.app import create_app
from cdr.metrics import Metrics
from cdr.store import open_store
from cdr.store.client import Row, Store
from cdr.store.migrations import load_migrations, migrate
from cdr.store.queries import SearchFilters, tenant_granules_query
from tests.api.conftest import TOKENS, Api, api_settings, serve
from tests.helpers import make_event, store_events

TENANT = "t1.example"
# Numbers as national significant numbers (Vietnam, +84) and the forms a PBX logs them in.
MOBILES = [f"9{n:08d}" for n in (12345678, 23456789, 34567890, 45678901)]
LANDLINE = "2873001234"
BUSY = "912000000"  # on most calls: more than any first read of keys holds
EXTENSIONS = ["101", "102"]


def forms(nsn: str) -> list[str]:
    return ["0" + nsn, "84" + nsn, "+84" + nsn]


def identity(logged: str) -> str:
    """Which number a logged value is, by the three forms' plain rules (no phonenumbers)."""
    if logged.startswith("+84"):
        return logged[3:]
    if logged.startswith("84") and len(logged) >= 11:
        return logged[2:]
    if logged.startswith("0"):
        return logged[1:]
    return logged


def _calls(n: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pool = [*MOBILES, LANDLINE]
    out = []
    for i in range(n):
        event = make_event(rng, TENANT, start + timedelta(seconds=97 * i))
        if rng.random() < 0.15:
            event["from_number"], event["to_number"] = rng.choice(EXTENSIONS), rng.choice(EXTENSIONS)
        else:
            busy = rng.random() < 0.6
            number = rng.choice(forms(BUSY if busy else rng.choice(pool)))
            other = rng.choice([*EXTENSIONS, "19001919"])
            event["from_number"], event["to_number"] = (number, other) if rng.random() < 0.5 else (other, number)
        out.append(event)
    return out


@pytest.fixture(scope="module")
async def phones_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    settings = api_settings(tmp_path_factory.mktemp("phone-store"))
    store = open_store(settings.clickhouse)
    before = [m for m in load_migrations() if m.name != "phone_search"]
    await migrate(store, before)
    old = _calls(300, seed=1, start=datetime(2024, 3, 1, tzinfo=UTC))
    await store_events(store, old, settings.common.zone, canonical_numbers=False)  # as before 0007
    await migrate(store)  # 0007: the canonical columns default to the raw numbers, keys backfilled
    server, task, url = await serve(create_app(settings.api, settings.common, store, Metrics()), settings)
    seeded = Api(url, settings, store)
    seeded.events.extend(old)
    await seeded.insert(_calls(300, seed=2, start=datetime(2024, 4, 1, tzinfo=UTC)))
    # A correction that renumbers a call of BUSY: its key under BUSY stays, the call does not.
    moved = next(e for e in seeded.events[len(old) :] if BUSY in (identity(e["from_number"]), identity(e["to_number"])))
    corrected = {**moved, "emitted_at": _later(moved["emitted_at"])}
    corrected["from_number"], corrected["to_number"] = forms(MOBILES[0])[0], "101"
    await seeded.insert([corrected])
    try:
        yield seeded
    finally:
        server.should_exit = True
        await task
        await store.close()


def _later(stamp: str) -> str:
    return (datetime.fromisoformat(stamp) + timedelta(seconds=1)).isoformat()


def _matching(records: list[dict[str, Any]], nsn: str) -> list[str]:
    return [r["id"] for r in records if nsn in (identity(r["from_number"]), identity(r["to_number"]))]


@pytest.fixture(params=["listed", "counted", "all by keys", "all counted, then by range"])
def candidates(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a read takes its candidates: as a list of keys (up to MAX_LISTED_KEYS),
    or as their number, read again by the read and counted when it comes back short. And
    the ways a read of all of a number's records (a total, stats) goes: by its candidate
    keys, when they are few against the tenant's granules; from the tenant's range when
    they are not, known at once (these tests' tenant spans a few granules: the other
    cases) or from counting the candidates."""
    if request.param == "counted":
        monkeypatch.setattr(routes, "MAX_LISTED_KEYS", 0)
    elif request.param == "all by keys":
        monkeypatch.setattr(routes, "_CANDIDATES_A_GRANULE", 10**9)
    elif request.param == "all counted, then by range":
        monkeypatch.setattr(routes, "_CANDIDATES_A_GRANULE", 1)


@pytest.mark.usefixtures("candidates")
@pytest.mark.parametrize("nsn", [*MOBILES, LANDLINE, BUSY, *EXTENSIONS])
async def test_a_phone_search_equals_filtering_the_scroll(phones_api: Api, nsn: str) -> None:
    everything = await phones_api.scroll(TENANT, {"order": "desc"})
    wanted = _matching(everything, nsn)
    assert wanted, "the data has calls of every number"
    for form in forms(nsn) if nsn not in EXTENSIONS else [nsn]:
        found = await phones_api.scroll(TENANT, {"phone": form, "order": "desc"})
        assert [r["id"] for r in found] == wanted, form
        # Small batches: each a limited read of keys, continued after the last one.
        async with phones_api.client(TENANT) as client:
            ids: list[str] = []
            answer = (
                await client.get("/v1/cdr", params={"phone": form, "scroll": "true", "limit": "7", "order": "desc"})
            ).json()
            ids += [r["id"] for r in answer["data"]]
            while answer["scroll_id"]:
                answer = (await client.get("/v1/cdr", params={"scroll_id": answer["scroll_id"]})).json()
                ids += [r["id"] for r in answer["data"]]
            assert ids == wanted, form
            page = (
                await client.get("/v1/cdr", params={"phone": form, "page": "2", "limit": "5", "order": "desc"})
            ).json()
            assert page["total"] == len(wanted), form
            assert [r["id"] for r in page["data"]] == wanted[5:10], form
            stats = (await client.get("/v1/cdr/stats", params={"phone": form, "group_by": "status"})).json()
            assert sum(group["calls"] for group in stats["data"]) == len(wanted), form


@pytest.mark.usefixtures("candidates")
async def test_a_second_filter_reads_more_keys_until_the_page_is_full(phones_api: Api) -> None:
    everything = await phones_api.scroll(TENANT, {"order": "desc"})
    busy = [r for r in everything if r["status"] == "BUSY"]
    wanted = _matching(busy, BUSY)
    assert len(wanted) > 10, "enough busy calls of the busy number for two pages"
    async with phones_api.client(TENANT) as client:
        params = {"phone": forms(BUSY)[2], "status": "BUSY", "page": "2", "limit": "5", "order": "desc"}
        page = (await client.get("/v1/cdr", params=params)).json()
    assert [r["id"] for r in page["data"]] == wanted[5:10]
    assert page["total"] == len(wanted)


async def test_a_renumbered_call_is_not_found_by_its_old_number(phones_api: Api) -> None:
    """Its key under the old number is still in the key table, its call is not."""
    everything = {r["id"]: r for r in await phones_api.scroll(TENANT, {"order": "desc"})}
    stale = [
        key
        for key in await phones_api.store.query(
            f"SELECT toString(id) FROM {phones_api.store.qualified('cdr_key_by_phone')}"
            " WHERE tenant_id = {t:String} AND phone = {p:String}",
            {"t": TENANT, "p": "+84" + BUSY},
        )
        if BUSY not in (identity(everything[key[0]]["from_number"]), identity(everything[key[0]]["to_number"]))
    ]
    assert len(stale) == 1
    found = await phones_api.scroll(TENANT, {"phone": "0" + BUSY})
    assert stale[0][0] not in {r["id"] for r in found}


class _CountingStore(Store):
    """The store, counting the reads the API runs on it, and keeping their SQL."""

    reads = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[str] = []

    async def query(self, sql: str, params: Any = None, *, health: bool = False, **options: Any) -> list[Row]:
        if not health:
            self.reads += 1
            self.statements.append(sql)
        return await super().query(sql, params, health=health, **options)


async def test_a_search_that_finds_its_calls_is_two_reads(phones_api: Api) -> None:
    """The candidates, then their records: a number with fewer calls than the batch (most
    numbers) needs no third read to know that none is left (fewer keys than asked for)."""
    store = _CountingStore(phones_api.store.dsn, database=phones_api.store.database)
    app = create_app(phones_api.settings.api, phones_api.settings.common, store, Metrics())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=_auth()) as client:
            answer = await client.get("/v1/cdr", params={"phone": "0" + MOBILES[1], "scroll": "true", "limit": "1000"})
        assert answer.status_code == 200 and answer.json()["data"] and answer.json()["scroll_id"] is None
        assert store.reads == 2
    finally:
        await store.close()


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("most", [250, 1])
async def test_a_page_of_a_number_reads_its_records_or_counts_its_months(
    phones_api: Api, monkeypatch: pytest.MonkeyPatch, order: str, most: int
) -> None:
    """Page mode (a CRM looking up a caller), with a second filter. A number with at most
    ``_PHONE_PAGE_ALL`` candidates: its candidates, then all their records, whose number is
    the total (two reads). One with more: its candidates to learn that, then the month
    counts, the candidates and the page's records (and more candidates when the second
    filter left too few). The same page and total either way."""
    monkeypatch.setattr(routes, "_PHONE_PAGE_ALL", most)
    everything = await phones_api.scroll(TENANT, {"order": order, "status": "ANSWERED"})
    wanted = _matching(everything, MOBILES[2])
    assert len(wanted) > 6, "enough answered calls of the number for two pages"
    store = _CountingStore(phones_api.store.dsn, database=phones_api.store.database)
    app = create_app(phones_api.settings.api, phones_api.settings.common, store, Metrics())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=_auth()) as client:
            params = {"phone": "+84" + MOBILES[2], "status": "ANSWERED", "page": "2", "limit": "3", "order": order}
            answer = (await client.get("/v1/cdr", params=params)).json()
        assert answer["total"] == len(wanted)
        assert [r["id"] for r in answer["data"]] == wanted[3:6]
        assert store.reads == 2 if most == 250 else store.reads > 3
    finally:
        await store.close()


async def test_a_busy_number_paged_on_counts_its_months_without_checking_again(phones_api: Api) -> None:
    """Its first page learns that it has too many candidates to read at once and counts its
    months; the next page (a console paging on) goes to the counted months at once."""
    everything = await phones_api.scroll(TENANT, {"order": "desc"})
    wanted = _matching(everything, BUSY)
    store = _CountingStore(phones_api.store.dsn, database=phones_api.store.database)
    app = create_app(phones_api.settings.api, phones_api.settings.common, store, Metrics())
    try:
        transport = httpx.ASGITransport(app=app)
        reads = []
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=_auth()) as client:
            for page in (1, 2):
                before = store.reads
                params = {"phone": "0" + BUSY, "page": str(page), "limit": "20", "order": "desc"}
                answer = (await client.get("/v1/cdr", params=params)).json()
                reads.append(store.reads - before)
                assert answer["total"] == len(wanted)
                assert [r["id"] for r in answer["data"]] == wanted[(page - 1) * 20 : page * 20]
        assert reads[1] < reads[0], reads
    finally:
        await store.close()


def test_the_busy_number_has_more_candidates_than_a_page_reads_at_once(phones_api: Api) -> None:
    """So that the tests above with BUSY take the month counts' way (routes._PHONE_PAGE_ALL)."""
    assert len(_matching(phones_api.events, BUSY)) > routes._PHONE_PAGE_ALL


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[TENANT]}"}


@pytest.mark.parametrize("way", ["range, known at once", "range, once counted", "keys"])
async def test_a_busy_numbers_total_and_stats_read_its_keys_only_when_they_are_few(
    phones_api: Api, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """A page's total and stats read every record of the number: by its candidate keys when
    they are few against the tenant's granules, else from the tenant's range (known from the
    granules alone when even a page's worth of candidates is too many, else by counting
    them). The same answers every way."""
    candidates = len(set(_matching(phones_api.events, BUSY)))  # every version that had the number
    assert candidates > routes._PHONE_PAGE_ALL + 2, "room for a bound between a page's worth and all of them"
    granules = tenant_granules_query("cdr.cdr", TENANT, SearchFilters())
    marks = sum(int(row[-1]) for row in await phones_api.store.query(granules.sql, granules.params))
    assert marks > 0
    # The most candidates read by their keys: none; between a page's worth and all; all.
    most = {"range, known at once": 0.5, "range, once counted": (routes._PHONE_PAGE_ALL + candidates) / 2, "keys": 1e12}
    monkeypatch.setattr(routes, "_CANDIDATES_A_GRANULE", most[way] / marks)
    wanted = _matching(await phones_api.scroll(TENANT, {"order": "desc"}), BUSY)
    store = _CountingStore(phones_api.store.dsn, database=phones_api.store.database)
    app = create_app(phones_api.settings.api, phones_api.settings.common, store, Metrics())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=_auth()) as client:
            page = (await client.get("/v1/cdr", params={"phone": "0" + BUSY, "page": "1", "limit": "20"})).json()
            stats = (await client.get("/v1/cdr/stats", params={"phone": "0" + BUSY, "group_by": "status"})).json()
        assert page["total"] == len(wanted)
        assert sum(group["calls"] for group in stats["data"]) == len(wanted)
        every = [sql for sql in store.statements if "GROUP BY _partition_id" in sql or "GROUP BY grp" in sql]
        assert len(every) == 2, store.statements
        assert all(("_key_by_phone" in sql) == (way == "keys") for sql in every), every
        counted = [sql for sql in store.statements if sql.startswith("SELECT count() FROM (SELECT time_started, id")]
        assert len(counted) == (0 if way == "range, known at once" else 2), store.statements
    finally:
        await store.close()
