"""GET /v1/cdr filters and pagination against an independently computed answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api
from tests.api.expect import expected
from tests.helpers import events


async def all_pages(client: httpx.AsyncClient, params: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        r = await client.get("/v1/cdr", params={**params, "limit": "1000", "page": str(page)})
        assert r.status_code == 200, r.text
        body = r.json()
        records.extend(body["data"])
        if len(body["data"]) < 1000:
            return records, body["total"]
        page += 1


def _pick(api: Api, field: str) -> Any:
    tenant_events = [e for e in api.events if e["tenant_id"] == "t1.example"]
    return tenant_events[len(tenant_events) // 3][field]


FILTER_CASES: list[tuple[str, Any]] = [
    ("no filter", lambda api: {}),
    ("start_date day", lambda api: {"start_date": "2024-05-04"}),
    ("start_date datetime", lambda api: {"start_date": "2024-05-04 10:00:00"}),
    ("end_date day", lambda api: {"end_date": "2024-05-03"}),
    ("start and end", lambda api: {"start_date": "2024-05-02 08:00:00", "end_date": "2024-05-03 10:30:00"}),
    ("rfc3339 bounds", lambda api: {"start_date": "2024-05-02T01:00:00Z", "end_date": "2024-05-03T12:00:00+07:00"}),
    ("ended range", lambda api: {"start_date_ended": "2024-05-05", "end_date_ended": "2024-05-06 11:00:00"}),
    ("duration", lambda api: {"duration": str(_pick(api, "duration"))}),
    ("min_duration", lambda api: {"min_duration": "600"}),
    ("max_duration", lambda api: {"max_duration": "40"}),
    ("duration range", lambda api: {"min_duration": "30", "max_duration": "300"}),
    ("cause", lambda api: {"cause": "USER_BUSY"}),
    ("phone_prefix national", lambda api: {"phone_prefix": "09"}),
    ("phone_prefix international", lambda api: {"phone_prefix": "+849"}),
    ("phone_prefix hotline", lambda api: {"phone_prefix": "1900"}),
    ("extension", lambda api: {"extension": "105"}),
    (
        "recordingfile",
        lambda api: {
            "recordingfile": next(
                e["recording_url"].rsplit("/", 1)[-1]
                for e in api.events
                if e["tenant_id"] == "t1.example" and e["recording_url"]
            )
        },
    ),
    ("status", lambda api: {"status": "busy"}),
    ("status with space", lambda api: {"status": "NO ANSWER"}),
    (
        "phone national",
        lambda api: {
            "phone": next(
                e["to_number"] for e in api.events if e["tenant_id"] == "t1.example" and e["direction"] == "outbound"
            )
        },
    ),
    ("phone hotline", lambda api: {"phone": "19001919"}),
    ("direction name", lambda api: {"direction": "Outbound"}),
    ("direction code", lambda api: {"direction": "3"}),
    ("status+direction", lambda api: {"status": "ANSWERED", "direction": "inbound"}),
    (
        "combined",
        lambda api: {
            "start_date": "2024-05-03 08:00:00",
            "min_duration": "100",
            "direction": "inbound",
            "status": "answered",
        },
    ),
]


@pytest.mark.parametrize(("name", "make"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
async def test_filter(api: Api, name: str, make: Any) -> None:
    params = make(api)
    want = expected(api.events, "t1.example", params)
    async with api.client() as client:
        got, total = await all_pages(client, params)
    assert total == len(want)
    assert got == want
    if name != "no filter":
        assert 0 < len(want) < len(expected(api.events, "t1.example", {})), "filter selects a real subset"


async def test_phone_forms_match_each_other(api: Api) -> None:
    national = next(
        e["to_number"]
        for e in api.events
        if e["tenant_id"] == "t1.example" and e["direction"] == "outbound" and e["to_number"].startswith("0")
    )
    forms = [national, "84" + national[1:], "+84" + national[1:]]
    async with api.client() as client:
        answers = [await all_pages(client, {"phone": form}) for form in forms]
    assert answers[0][1] >= 1
    assert answers[0] == answers[1] == answers[2]


async def test_pagination_page_one_middle_and_past_end(api: Api) -> None:
    want = expected(api.events, "t1.example", {})
    async with api.client() as client:
        first = (await client.get("/v1/cdr", params={"page": "1", "limit": "50"})).json()
        middle = (await client.get("/v1/cdr", params={"page": "7", "limit": "50"})).json()
        beyond = (await client.get("/v1/cdr", params={"page": "1000", "limit": "50"})).json()
        by_offset = (await client.get("/v1/cdr", params={"offset": "125", "limit": "50"})).json()
        offset_wins = (await client.get("/v1/cdr", params={"offset": "10", "page": "3", "limit": "5"})).json()
        default = (await client.get("/v1/cdr", params={"page": "2"})).json()
    assert first == {"data": want[:50], "limit": 50, "page": 1, "total": len(want)}
    assert middle == {"data": want[300:350], "limit": 50, "page": 7, "total": len(want)}
    assert beyond == {"data": [], "limit": 50, "page": 1000, "total": len(want)}
    assert by_offset == {"data": want[125:175], "limit": 50, "page": 3, "total": len(want)}
    assert offset_wins["data"] == want[10:15] and offset_wins["page"] == 3
    assert default == {"data": want[10:20], "limit": 10, "page": 2, "total": len(want)}


async def test_pages_across_months_both_orders(api: Api) -> None:
    """A page is read from the months that hold it (their counts first; page 1 guessed from
    the tenant's edge month or the filters' bound): every page of sparse months, in both
    orders and with a filter, is the plain slice, whichever months a page spans."""
    tenant = "t3.example"
    sparse = events(40, seed=51, tenants=(tenant,), start=datetime(2019, 1, 20, tzinfo=UTC), spacing_s=5 * 86_400)
    sparse += events(9, seed=52, tenants=(tenant,), start=datetime(2019, 5, 31, 20, tzinfo=UTC), spacing_s=3_600)
    await api.insert(sparse)
    for params in (
        {"start_date": "2019-01-01", "end_date": "2019-12-31"},
        {"start_date": "2019-01-01", "end_date": "2019-12-31", "status": "ANSWERED"},
    ):
        for order in ("asc", "desc"):
            want = expected(api.events, tenant, params)
            want = want if order == "asc" else want[::-1]
            assert len(want) > 7
            async with api.client(tenant) as client:
                for page in range(1, len(want) // 7 + 3):
                    query = {**params, "order": order, "limit": "7", "page": str(page)}
                    body = (await client.get("/v1/cdr", params=query)).json()
                    assert body == {
                        "data": want[(page - 1) * 7 : page * 7],
                        "limit": 7,
                        "page": page,
                        "total": len(want),
                    }
                for offset in (3, 11, 17):
                    query = {**params, "order": order, "limit": "5", "offset": str(offset)}
                    body = (await client.get("/v1/cdr", params=query)).json()
                    assert body["data"] == want[offset : offset + 5], (order, offset)
    # The next page is guessed from the last page's month counts; calls stored since in a
    # newer month move it, and the fresh counts read beside the guess catch that.
    params = {"start_date": "2019-01-01", "end_date": "2019-12-31", "order": "desc", "limit": "7", "page": "2"}
    async with api.client(tenant) as client:
        before = (await client.get("/v1/cdr", params=params)).json()
        await api.insert(events(14, seed=53, tenants=(tenant,), start=datetime(2019, 11, 2, tzinfo=UTC)))
        after = (await client.get("/v1/cdr", params=params)).json()
    want = expected(api.events, tenant, {"start_date": "2019-01-01", "end_date": "2019-12-31"})[::-1]
    assert after["data"] == want[7:14] and after["total"] == before["total"] + 14
    assert after["data"] != before["data"]


async def test_default_mode_is_scroll(api: Api) -> None:
    want = expected(api.events, "t1.example", {})
    async with api.client() as client:
        body = (await client.get("/v1/cdr")).json()
        forced = (await client.get("/v1/cdr", params={"scroll": "true", "limit": "3"})).json()
    assert set(body) == {"data", "scroll_id"}
    assert body["data"] == want[:10] and body["scroll_id"]
    assert forced["data"] == want[:3] and forced["scroll_id"]


async def test_order_desc(api: Api) -> None:
    want = expected(api.events, "t1.example", {})[::-1]
    async with api.client() as client:
        page = (await client.get("/v1/cdr", params={"limit": "20", "order": "desc"})).json()
        first = (await client.get("/v1/cdr", params={"limit": "20", "order": "desc", "scroll": "1"})).json()
        second = (await client.get("/v1/cdr", params={"scroll_id": first["scroll_id"], "limit": "20"})).json()
    assert page["data"] == want[:20]
    assert first["data"] + second["data"] == want[:40]


async def test_get_by_id_and_sip_call_id(api: Api) -> None:
    e = next(x for x in api.events if x["tenant_id"] == "t1.example" and x["sip_call_id"])
    want = expected([e], "t1.example", {})[0]
    async with api.client() as client:
        by_id = await client.get(f"/v1/cdr/{e['id']}")
        by_sip = await client.get(f"/v1/cdr/{e['sip_call_id']}")
        missing = await client.get("/v1/cdr/00000000-0000-4000-8000-000000000000")
    assert by_id.status_code == 200 and by_id.json() == want
    assert list(by_id.json()) == list(want)  # the document's field order
    assert by_sip.status_code == 200 and by_sip.json() == want
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_shared_sip_call_id_returns_earliest(api: Api) -> None:
    from tests.helpers import events

    pair = events(2, seed=99, tenants=("t1.example",))
    pair[0]["sip_call_id"] = pair[1]["sip_call_id"] = "shared-call-id@test"
    await api.insert(pair)
    async with api.client() as client:
        r = await client.get("/v1/cdr/shared-call-id@test")
    assert r.status_code == 200
    assert r.json()["id"] == min(pair, key=lambda e: e["time_started"])["id"]


async def test_a_uuid_key_names_an_id_first_then_a_call_id(api: Api) -> None:
    """PBXs may use UUIDs as SIP Call-IDs: a UUID key is looked up as an id first and,
    when no CDR has that id, as a Call-ID; a correction that changes the Call-ID makes
    the old one find nothing."""
    from tests.helpers import events

    a, b, c = events(3, seed=123, tenants=("t1.example",))
    b["sip_call_id"] = a["id"]  # b's Call-ID is a's id: the id wins
    c["sip_call_id"] = "4f1c1bd4-3c44-4ad2-9d2f-2a4d5e6f7a8b"
    await api.insert([a, b, c])
    corrected = {**a, "sip_call_id": "renamed@test", "emitted_at": "2030-01-01T00:00:00Z"}
    await api.insert([corrected])
    async with api.client() as client:
        by_id = (await client.get(f"/v1/cdr/{a['id']}")).json()
        by_uuid_call_id = (await client.get(f"/v1/cdr/{c['sip_call_id']}")).json()
        old_call_id = await client.get(f"/v1/cdr/{a['sip_call_id']}")
    assert by_id["id"] == a["id"] and by_id["sip_call_id"] == "renamed@test"
    assert by_uuid_call_id["id"] == c["id"]
    assert old_call_id.status_code == 404, old_call_id.json()


async def test_a_duration_range_that_holds_nothing_is_refused(api: Api) -> None:
    async with api.client() as client:
        r = await client.get("/v1/cdr", params={"min_duration": "60", "max_duration": "60"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_duration"


@pytest.mark.parametrize(
    ("prefix", "forms"),
    [
        ("09", ("+849", "09", "849")),
        ("+8428", ("+8428", "028", "8428")),
        ("1900", ("1900",)),
        ("84", ("84",)),
        ("0", ("0",)),
    ],
)
def test_prefix_forms(prefix: str, forms: tuple[str, ...]) -> None:
    from cdr.api.params import prefix_variants

    assert prefix_variants(prefix, "VN") == forms
