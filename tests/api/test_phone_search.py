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


@pytest.fixture(params=["listed", "counted"])
def candidates(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a read takes its candidates: as a list of keys (up to MAX_LISTED_KEYS),
    or as their number, read again by the read and counted when it comes back short."""
    if request.param == "counted":
        monkeypatch.setattr(routes, "MAX_LISTED_KEYS", 0)


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
    """The store, counting the reads the API runs on it."""

    reads = 0

    async def query(self, sql: str, params: Any = None, *, health: bool = False, **options: Any) -> list[Row]:
        if not health:
            self.reads += 1
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


async def test_a_page_of_a_number_with_few_calls_is_two_reads(phones_api: Api) -> None:
    """Page mode (a CRM looking up a caller): the candidates, then all their records, whose
    number is the total; no read of the month counts. A busy number (more candidates than
    that read takes) counts its months: test_a_phone_search_equals_filtering_the_scroll."""
    everything = await phones_api.scroll(TENANT, {"order": "asc"})
    wanted = _matching(everything, MOBILES[2])
    store = _CountingStore(phones_api.store.dsn, database=phones_api.store.database)
    app = create_app(phones_api.settings.api, phones_api.settings.common, store, Metrics())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=_auth()) as client:
            params = {"phone": "+84" + MOBILES[2], "page": "3", "limit": "4", "order": "asc"}
            answer = (await client.get("/v1/cdr", params=params)).json()
        assert answer["total"] == len(wanted) > 12
        assert [r["id"] for r in answer["data"]] == wanted[8:12]
        assert store.reads == 2
    finally:
        await store.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[TENANT]}"}
