"""HTTP details a client relies on (spec/API.md "HTTP details"): dates the store cannot
hold, 405 with Allow, oversized requests, one definition per parameter, response headers."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr.api.errors import error_codes
from cdr.api.openapi import openapi_document
from cdr.api.params import STORE_MAX, STORE_MIN, Limits, list_params
from tests.api.conftest import TOKENS, Api

DATE_PARAMS = ("start_date", "end_date", "start_date_ended", "end_date_ended")


@pytest.mark.parametrize("name", DATE_PARAMS)
@pytest.mark.parametrize(
    "value",
    [
        "0999-01-01",
        "1899-12-31",
        "1900-01-01",  # 00:00 at +07:00 is still 1899 in UTC
        "2300-01-01",
        "2299-12-31T23:59:59-23:59",
        "2299-12-31T23:30:00-01:00",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2024-02-30",
        "2023-02-29 10:00:00",
    ],
)
async def test_dates_the_store_cannot_hold_are_400_naming_the_parameter(api: Api, name: str, value: str) -> None:
    async with api.client() as client:
        r = await client.get("/v1/cdr", params={name: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_parameter" and r.json()["error"]["param"] == name


@pytest.mark.parametrize("value", ["1900-01-01T00:00:00Z", "1900-01-02", "2299-12-31 23:59:59+00:00", "2299-12-31"])
async def test_dates_at_the_edges_of_the_store_are_accepted(api: Api, value: str) -> None:
    async with api.client() as client:
        for name in DATE_PARAMS:
            r = await client.get("/v1/cdr", params={name: value, "limit": "1"})
            assert r.status_code == 200, (name, value, r.text)


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)
instants = st.datetimes(min_value=datetime(1850, 1, 1), max_value=datetime(2350, 12, 31))


@given(moment=instants, offset=offsets, name=st.sampled_from(DATE_PARAMS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_rfc3339_moment_is_answered_or_refused_by_range(
    api: Api, moment: datetime, offset: int, name: str
) -> None:
    """Property: 200 exactly when the instant is inside what the store holds, else a 400
    naming the parameter; never a 500 (a date crossing a year edge under an extreme offset
    once overflowed)."""
    sign = "+" if offset >= 0 else "-"
    text = moment.replace(microsecond=0).isoformat() + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    try:
        utc: datetime | None = moment.replace(tzinfo=UTC) - timedelta(minutes=offset)
    except OverflowError:
        utc = None
    async with api.client() as client:
        r = await client.get("/v1/cdr", params={name: text, "limit": "1"})
    inside = utc is not None and STORE_MIN <= utc <= STORE_MAX and 1900 <= moment.year <= 2299
    if inside:
        assert r.status_code == 200, (text, r.text)
    else:
        assert r.status_code == 400 and r.json()["error"]["param"] == name, (text, r.text)


async def test_wrong_method_is_405_with_allow_and_head_works(api: Api) -> None:
    async with api.client() as client:
        for path in ("/v1/cdr", "/v1/cdr/abc", "/healthz", "/openapi.json"):
            r = await client.post(path)
            assert r.status_code == 405, path
            assert r.headers["Allow"] == "GET, HEAD", path
            assert r.json()["error"]["code"] == "method_not_allowed"
        head = await client.head("/v1/cdr", params={"limit": "3"})
        get = await client.get("/v1/cdr", params={"limit": "3"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


async def test_oversized_url_and_headers_get_the_json_error_model(api: Api) -> None:
    s = api.settings
    async with api.client() as client:
        long_url = await client.get("/v1/cdr", params={"extension": "x" * 200, "junk": "y" * s.api.api_max_url_bytes})
        big_headers = await client.get("/v1/cdr", headers={"X-Padding": "z" * s.api.api_max_header_bytes})
    assert long_url.status_code == 414 and long_url.json()["error"]["code"] == "uri_too_long"
    assert big_headers.status_code == 431 and big_headers.json()["error"]["code"] == "headers_too_large"
    # Past even the HTTP parser's buffer (128 KB request line): still JSON, not a reset.
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/cdr?junk=" + b"q" * 128 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert b"application/json" in head and b'"headers_too_large"' in body


async def test_two_authorization_headers_are_400(api: Api) -> None:
    token = f"Bearer {TOKENS['t1.example']}"
    async with api.client(tenant=None) as client:
        r = await client.get("/v1/cdr", headers=[("Authorization", token), ("Authorization", token)])
    assert r.status_code == 400 and r.json()["error"]["param"] == "Authorization"


@pytest.mark.parametrize("name", ["status", "phone", "limit", "start_date", "scroll_id", "order"])
async def test_a_repeated_parameter_is_400_naming_it(api: Api, name: str) -> None:
    async with api.client() as client:
        r = await client.get(f"/v1/cdr?{name}=1&{name}=2")
    assert r.status_code == 400 and r.json()["error"]["param"] == name
    assert "2 times" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("phone", "090-123-4567"),
        ("phone", "090 123 4567"),
        ("phone", "٠٩٠١٢٣٤٥٦٧"),  # Arabic-Indic digits: \d would take them
        ("phone", "0901234567\n"),  # `$` would take a trailing newline
        ("phone", ""),
        ("status", ""),
        ("duration", " 5"),
        ("duration", "٥"),
        ("limit", "+5"),
        ("start_date", "2024-05-01\n"),
    ],
)
async def test_values_outside_the_documented_pattern_are_400(api: Api, name: str, value: str) -> None:
    async with api.client() as client:
        r = await client.get("/v1/cdr", params={name: value})
    assert r.status_code == 400, (name, value, r.text)
    assert r.json()["error"]["param"] == name


def test_openapi_reads_the_parameter_table() -> None:
    """Every parameter the parser reads is documented with its bounds and pattern, and the
    error enum is every code an error class can send."""
    from tests.api.conftest import api_settings

    s = api_settings(data_dir=__import__("pathlib").Path("/nonexistent"))
    document = openapi_document(s.api)
    documented = {p["name"]: p for p in document["paths"]["/v1/cdr"]["get"]["parameters"]}
    table = list_params(Limits(s.api.default_limit, s.api.max_limit, s.api.max_offset))
    assert list(documented) == [p.name for p in table]
    for param in table:
        schema = documented[param.name]["schema"]
        for key in ("minimum", "maximum", "maxLength"):
            assert schema.get(key) == param.schema.get(key), (param.name, key)
        if param.schema["type"] == "string":
            assert schema["pattern"] == param.schema["pattern"]
    assert documented["offset"]["schema"]["maximum"] == s.api.max_offset
    assert documented["duration"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 4_294_967_295}
    enum = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert enum == error_codes()
    assert {"uri_too_long", "headers_too_large", "method_not_allowed", "internal"} <= set(enum)
    responses = document["paths"]["/v1/cdr"]["get"]["responses"]
    assert {"400", "401", "405", "414", "431", "429", "503"} <= set(responses)


async def test_deep_pagination_points_to_scroll(api: Api) -> None:
    deepest = api.settings.api.max_offset
    async with api.client() as client:
        by_offset = await client.get("/v1/cdr", params={"offset": str(deepest + 1), "limit": "10"})
        by_page = await client.get("/v1/cdr", params={"page": str(deepest // 10 + 2), "limit": "10"})
        last_allowed = await client.get("/v1/cdr", params={"offset": str(deepest), "limit": "10"})
    assert by_offset.status_code == 400 and by_offset.json()["error"]["param"] == "offset"
    assert by_page.status_code == 400 and by_page.json()["error"]["param"] == "page"
    assert "scroll" in by_page.json()["error"]["message"]
    assert last_allowed.status_code == 200


async def test_response_headers(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    async with api.client() as client:
        plain = await client.get("/v1/cdr", params={"limit": "1000"}, headers={"Accept-Encoding": "identity"})
        with caplog.at_level(logging.INFO, logger="cdr.api.access"):
            zipped = await client.get(
                "/v1/cdr", params={"limit": "1000"}, headers={"Accept-Encoding": "gzip", "X-Request-Id": "abc-123"}
            )
        error = await client.get("/v1/cdr", params={"limit": "0"})
        hostile = await client.get("/v1/cdr", headers={"X-Request-Id": "x" * 500})
        ops = await client.get("/healthz")
    assert zipped.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
    assert zipped.json() == plain.json()  # httpx inflates it
    assert int(zipped.headers["Content-Length"]) * 4 < len(plain.content)  # level 1: ~4.7x here
    assert zipped.headers["X-Request-Id"] == "abc-123"
    assert any(getattr(r, "request_id", None) == "abc-123" for r in caplog.records)
    for response in (plain, zipped, error):
        assert response.headers["Cache-Control"] == "no-store"
    assert len(hostile.headers["X-Request-Id"]) == 32 and hostile.headers["X-Request-Id"] != "x" * 500
    assert "Cache-Control" not in ops.headers and ops.headers["X-Request-Id"]
    assert plain.headers["X-Request-Id"] != error.headers["X-Request-Id"]


async def test_docs_render_the_openapi_document_from_packaged_assets(api: Api) -> None:
    async with api.client(tenant=None) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text)
        assert set(assets) >= {"/docs/static/swagger-ui.css", "/docs/static/swagger-ui-bundle.js", "/docs/init.js"}
        assert "http" not in "".join(assets)  # nothing from a CDN
        for asset in assets:
            fetched = await client.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 0, asset
        init = (await client.get("/docs/init.js")).text
        assert "'/openapi.json'" in init
        assert (await client.get("/openapi.json")).json()["paths"]["/v1/cdr/export"]
