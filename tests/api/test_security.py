"""Auth, tenant isolation, cursor integrity, and hostile input."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from starlette.routing import Route

from cdr.api.app import create_app
from cdr.api.cursor import CursorCodec, Position
from cdr.api.params import FILTER_PARAMS
from cdr.metrics import Metrics
from tests.api.conftest import SECRET, Api, Clock, replace_file, second_server


async def test_missing_malformed_and_unknown_tokens_are_401(api: Api) -> None:
    cases = [
        api.client(tenant=None),
        api.client(token="definitely-not-a-token"),
    ]
    async with api.client(tenant=None) as raw:
        basic = await raw.get("/v1/cdr", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        empty = await raw.get("/v1/cdr", headers={"Authorization": "Bearer"})
    for client in cases:
        async with client:
            for path in ("/v1/cdr", "/v1/cdr/anything"):
                r = await client.get(path)
                assert r.status_code == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert r.json()["error"]["code"] == "unauthorized"
    assert basic.status_code == empty.status_code == 401


async def test_other_tenants_record_is_404(api: Api) -> None:
    theirs = next(e for e in api.events if e["tenant_id"] == "t2.example" and e["sip_call_id"])
    async with api.client("t1.example") as client:
        by_id = await client.get(f"/v1/cdr/{theirs['id']}")
        by_sip = await client.get(f"/v1/cdr/{theirs['sip_call_id']}")
        listed = await client.get("/v1/cdr", params={"limit": "1000", "phone": theirs["from_number"]})
    assert by_id.status_code == by_sip.status_code == 404
    assert theirs["id"] not in {r["id"] for r in listed.json()["data"]}


async def _first_cursor(api: Api, tenant: str = "t1.example") -> str:
    async with api.client(tenant) as client:
        body = (await client.get("/v1/cdr", params={"scroll": "true", "limit": "5", "status": "ANSWERED"})).json()
    cursor: str = body["scroll_id"]
    return cursor


async def test_bad_cursors_are_400(api: Api) -> None:
    good = await _first_cursor(api)
    middle = len(good) // 2
    flipped = good[:middle] + ("A" if good[middle] != "A" else "B") + good[middle + 1 :]
    codec = CursorCodec(SECRET.encode(), ttl_s=api.settings.api.cursor_ttl_s)
    expired = codec.encode(
        Position(
            "t1.example",
            {"status": "ANSWERED"},
            "asc",
            0,
            "00000000-0000-4000-8000-000000000000",
            int(time.time()) - 7200,
            5,
        )
    )
    forged = CursorCodec(b"another-secret-entirely-but-long-enough", 3600).encode(
        Position("t1.example", {}, "asc", 0, "00000000-0000-4000-8000-000000000000", int(time.time()), 5)
    )
    foreign = await _first_cursor(api, "t2.example")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # When the byte count is not a multiple of 3, the last character carries unused bits.
    spare_bits = good[:-1] + alphabet[alphabet.index(good[-1]) ^ 1]
    cases = {
        "padded": good + "=",
        "standard alphabet": good.replace("-", "+").replace("_", "/") + "+/",
        "unused trailing bits": spare_bits,
        "junk inside": good[:10] + "!*" + good[10:],
        "whitespace inside": good[:10] + " " + good[10:],
        "old signed format": good[:20] + "." + good[20:],
        "tampered": flipped,
        "truncated": good[: len(good) // 2],
        "garbage": "111222333444aaabbbcccddd==",
        "expired": expired,
        "wrong secret": forged,
        "other tenant": foreign,
        "non-ascii": "ü.ü",
    }
    async with api.client("t1.example") as client:
        for name, cursor in cases.items():
            r = await client.get("/v1/cdr", params={"scroll_id": cursor})
            assert r.status_code == 400, (name, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_scroll_id" and error["param"] == "scroll_id", name
            assert "t2.example" not in r.text
    assert "expired" in (await _message(api, expired))


async def _message(api: Api, cursor: str) -> str:
    async with api.client() as client:
        message: str = (await client.get("/v1/cdr", params={"scroll_id": cursor})).json()["error"]["message"]
    return message


async def test_changed_filters_under_a_cursor_are_400(api: Api) -> None:
    cursor = await _first_cursor(api)
    async with api.client() as client:
        same = await client.get("/v1/cdr", params={"scroll_id": cursor, "status": "answered"})
        changed = await client.get("/v1/cdr", params={"scroll_id": cursor, "status": "BUSY"})
        added = await client.get("/v1/cdr", params={"scroll_id": cursor, "direction": "inbound"})
        order = await client.get("/v1/cdr", params={"scroll_id": cursor, "order": "desc"})
    assert same.status_code == 200
    assert changed.status_code == 400 and changed.json()["error"]["param"] == "status"
    assert added.status_code == 400 and added.json()["error"]["param"] == "direction"
    assert order.status_code == 400 and order.json()["error"]["param"] == "order"


SQLISH = [
    "' OR 1=1 --",
    "x'); DROP TABLE cdr; --",
    "{tenant:String}",
    "\\' OR tenant_id != ''",
    "1 OR 1=1",
    "t1.example' UNION SELECT * FROM system.tables --",
]
TEXT_PARAMS = ["extension", "recordingfile", "status", "cause"]
TYPED_PARAMS = [p for p in FILTER_PARAMS if p not in TEXT_PARAMS] + [
    "limit",
    "page",
    "offset",
    "scroll_id",
    "order",
    "scroll",
]


@pytest.mark.parametrize("value", SQLISH)
async def test_sql_looking_values_are_harmless(api: Api, value: str) -> None:
    async with api.client() as client:
        for name in TEXT_PARAMS:
            r = await client.get("/v1/cdr", params={name: value, "limit": "5"})
            assert r.status_code == 200 and r.json()["total"] == 0, (name, r.text)
        for name in TYPED_PARAMS:
            r = await client.get("/v1/cdr", params={name: value})
            assert r.status_code == 400, (name, r.text)
            assert r.json()["error"]["param"] == name
        r = await client.get(f"/v1/cdr/{value}")
        assert r.status_code == 404
    # The table is still there, with the same rows.
    rows = await api.store.query(f"SELECT count() FROM {api.store.qualified('cdr')}")
    assert int(rows[0][0]) == len(api.events)


async def test_bad_values_name_the_parameter(api: Api) -> None:
    cases = {
        "start_date": "2021-13-45",
        "end_date": "yesterday",
        "duration": "-1",
        "min_duration": "1.5",
        "max_duration": "ten",
        "phone_prefix": "09x",
        "limit": "0",
        "page": "0",
        "offset": "-5",
        "direction": "sideways",
        "phone": "call-me",
        "scroll": "maybe",
        "order": "random",
    }
    async with api.client() as client:
        for name, value in cases.items():
            r = await client.get("/v1/cdr", params={name: value})
            assert r.status_code == 400, name
            assert r.json()["error"] == {
                "code": "invalid_parameter",
                "message": r.json()["error"]["message"],
                "param": name,
            }
        too_big = await client.get("/v1/cdr", params={"limit": str(api.settings.api.max_limit + 1)})
        backwards = await client.get("/v1/cdr", params={"start_date": "2024-05-02", "end_date": "2024-05-01"})
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "limit"
    assert backwards.status_code == 400 and backwards.json()["error"]["param"] == "end_date"


async def test_concurrent_tenants_never_see_each_other(api: Api) -> None:
    """Over HTTP, at once: one embedded handle shared by threads races on query
    parameters, so every store worker thread has a client of its own."""

    async def tenant_ids(tenant: str) -> set[str]:
        async with api.client(tenant) as client:
            r = await client.get("/v1/cdr", params={"limit": "200", "page": "1"})
            return {record["id"] for record in r.json()["data"]}

    own = {t: {e["id"] for e in api.events if e["tenant_id"] == t} for t in ("t1.example", "t2.example")}
    results = await asyncio.gather(*[tenant_ids(("t1.example", "t2.example")[i % 2]) for i in range(40)])
    for i, ids in enumerate(results):
        tenant = ("t1.example", "t2.example")[i % 2]
        assert ids and ids <= own[tenant]


async def test_rate_limit_answers_429_over_http(api: Api) -> None:
    """A second server on the same store with a tight limit: the third quick request is refused."""
    import httpx

    from tests.api.conftest import TOKENS

    server, task, url = await second_server(api, rate_limit_per_s=0.5, rate_limit_burst=2)
    try:
        headers = {"Authorization": f"Bearer {TOKENS['t1.example']}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            answers = [await client.get("/v1/cdr") for _ in range(3)]
            limited = await client.get("/v1/cdr")
        codes = [r.status_code for r in answers]
    finally:
        server.should_exit = True
        await task
    assert codes[:2] == [200, 200] and codes[2] == 429
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    # The state a client paces itself by, on every response while limits are on.
    assert [r.headers["RateLimit-Remaining"] for r in answers[:2]] == ["1", "0"]
    assert answers[0].headers["RateLimit-Limit"] == "2" and int(answers[0].headers["RateLimit-Reset"]) >= 1
    assert limited.headers["RateLimit-Remaining"] == "0"


async def test_a_flood_from_one_tenant_leaves_others_and_readiness_answering(api: Api) -> None:
    """The most expensive valid request (a 1,000-row page with its total, newest first,
    over every month), 60 at once from one tenant: it holds at most its share of the
    readers (the rest get 429 at once), and another tenant and /readyz keep answering."""
    import httpx

    from tests.api.conftest import TOKENS

    server, task, url = await second_server(api, tenant_max_concurrent_requests=4)  # two pages with totals
    expensive = {"page": "1", "limit": "1000", "order": "desc", "start_date": "1990-01-01"}
    try:
        async with (
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS['t1.example']}"}) as flood,
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS['t2.example']}"}) as other,
            httpx.AsyncClient(base_url=url) as probe,
        ):
            flooding = [asyncio.create_task(flood.get("/v1/cdr", params=expensive)) for _ in range(60)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            theirs = await other.get("/v1/cdr", params={"limit": "5"})
            ready = await probe.get("/readyz")
            answered_in = time.monotonic() - started
            codes = [r.status_code for r in await asyncio.gather(*flooding)]
    finally:
        server.should_exit = True
        await task
    assert theirs.status_code == 200 and ready.status_code == 200
    assert answered_in < 5, answered_in
    assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
    limited = codes.count(429)
    assert limited >= 30, f"only {limited} of 60 refused: the per-tenant limit did not hold"


async def test_a_read_over_its_budget_is_503_naming_the_budget(api: Api) -> None:
    import httpx

    from cdr.store.client import ReadBudget, Store
    from tests.api.conftest import TOKENS

    tight = Store(api.store.dsn, database=api.store.database, read_budget=ReadBudget(max_rows_to_read=10))
    server, task, url = await second_server(api, tight)
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS['t1.example']}"}) as c:
            over = await c.get("/v1/cdr", params={"page": "1", "limit": "100"})
            ready = await c.get("/readyz")
    finally:
        server.should_exit = True
        await task
        await tight.close()
    assert over.status_code == 503 and over.headers["Retry-After"] == "5"
    assert over.json()["error"]["code"] == "query_budget_exceeded" and "scroll" in over.json()["error"]["message"]
    assert ready.status_code == 200  # the health check's own reader, a tiny query


async def test_a_changed_token_file_takes_effect_without_a_restart(api: Api, tmp_path: Any) -> None:
    import httpx

    from cdr.api.auth import token_digest

    tokens = tmp_path / "tokens"
    tokens.write_text(f"t1.example:{token_digest('old-token-' + 'o' * 20)}\n")
    clock = Clock()
    server, task, url = await second_server(api, clock=clock, api_tokens="", api_tokens_file=tokens)

    async def status(token: str) -> int:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            return (await client.get("/v1/cdr", params={"limit": "1"})).status_code

    old, new = "old-token-" + "o" * 20, "new-token-" + "n" * 20
    try:
        assert await status(old) == 200 and await status(new) == 401
        replace_file(tokens, f"t1.example:{token_digest(new)}\n")  # the old one revoked
        clock.advance(60)  # past the recheck interval
        assert await status(old) == 401 and await status(new) == 200
        replace_file(tokens, "this line is not an entry\n")  # a broken file keeps what worked
        clock.advance(60)
        assert await status(new) == 200
    finally:
        server.should_exit = True
        await task


async def test_every_tenant_route_refuses_a_request_without_a_token(api: Api) -> None:
    """Walks the routes of the app as built: every /v1 route is authenticated by the way
    it is built, and nothing else but the documented operational routes is public."""
    app = create_app(api.settings.api, api.settings.common, api.store, Metrics())
    public = {"/openapi.json", "/docs", "/docs/init.js", "/docs/static", "/healthz", "/readyz", "/metrics"}
    public |= {"/console", "/console/", "/console/static"}  # the console's static page: data only with a token
    tenant_routes = [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/v1/")]
    assert len(tenant_routes) >= 4
    every = {getattr(r, "path", "") for r in app.routes}
    assert every - {r.path for r in tenant_routes} <= public, every
    async with api.client(tenant=None) as anonymous, api.client(token="not-a-token") as stranger:
        for route in tenant_routes:
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            method = sorted((route.methods or {"GET"}) - {"HEAD"})[0]  # a POST route is asked with POST
            for client in (anonymous, stranger):
                response = await client.request(method, path)
                assert response.status_code == 401, (route.path, method, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_client_that_leaves_frees_its_slot_and_its_waiting_read_never_runs(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """One reader, busy for ~2 s; a tenant allowed one page at a time (two reads) asks, gives up
    after 0.4 s and closes the connection. Its request is cancelled then (logged 499),
    so its read, still queued, is dropped and its slot is free at once: the same
    tenant's next request is served, not refused with 429 as while the first one held
    its slot until its read had run for nobody."""
    import logging

    import httpx

    from cdr.store.client import Store
    from tests.api.conftest import TOKENS

    caplog.set_level(logging.INFO, logger="cdr.api.access")
    one_reader = Store(api.store.dsn, database=api.store.database, read_workers=1)
    server, task, url = await second_server(api, one_reader, tenant_max_concurrent_requests=2)
    auth = {"Authorization": f"Bearer {TOKENS['t1.example']}"}
    busy = asyncio.create_task(one_reader.query("SELECT sleepEachRow(0.5) FROM numbers(4) SETTINGS max_block_size = 1"))
    try:
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=url, headers=auth) as leaving:
            with pytest.raises(httpx.ReadTimeout):
                await leaving.get("/v1/cdr", params={"limit": "5"}, timeout=0.4)
        await asyncio.sleep(0.2)
        assert not busy.done(), "the reader was not busy any more: the test proves nothing"
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as staying:
            answer = await staying.get("/v1/cdr", params={"limit": "5"})
        await busy
    finally:
        server.should_exit = True
        await task
        await one_reader.close()
    assert answer.status_code == 200, answer.text
    statuses = [getattr(r, "status", None) for r in caplog.records if r.name == "cdr.api.access"]
    assert 499 in statuses, statuses


async def test_readiness_answers_within_the_probe_timeout_when_clickhouse_does_not(api: Api) -> None:
    """The health check's reader stuck for ~3 s: /readyz answers after 2 s, below the
    chart's 3 s probe timeout, instead of leaving the probe without an answer; still
    ready (the schema was seen current), saying ClickHouse did not answer."""
    import httpx

    from cdr.api.app import READY_TIMEOUT_S
    from cdr.store.client import Store

    stuck = Store(api.store.dsn, database=api.store.database)
    server, task, url = await second_server(api, stuck)
    sql = "SELECT sleepEachRow(0.5) FROM numbers(6) SETTINGS max_block_size = 1"
    busy: asyncio.Task[object] | None = None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
            assert (await probe.get("/readyz")).status_code == 200  # the schema seen current
            busy = asyncio.create_task(stuck.query(sql, health=True))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            ready = await probe.get("/readyz")
            took = time.monotonic() - started
        assert not busy.done(), "the health reader was not stuck: the test proves nothing"
    finally:
        if busy is not None:
            await busy
        server.should_exit = True
        await task
        await stuck.close()
    assert ready.status_code == 200 and "no answer within" in ready.json()["checks"]["clickhouse"]
    # Answered after the timeout and while the read was still stuck (``busy`` not done).
    assert took >= READY_TIMEOUT_S, took


async def test_the_console_page_is_static_under_a_strict_content_security_policy(api: Api) -> None:
    async with api.client(tenant=None) as anonymous:
        page = await anonymous.get("/console")
        script = await anonymous.get("/console/static/console.js")
        slash = await anonymous.get("/console/")
    policy = page.headers["Content-Security-Policy"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
    assert "<script>" not in page.text and 'src="/console/static/console.js"' in page.text  # no inline script
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert slash.status_code == 308 and slash.headers["location"] == "/console"
