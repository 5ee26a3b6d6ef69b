"""Property-based: no query string, path or header yields a 500 or a non-JSON error."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdr.api.params import FILTER_PARAMS
from tests.api.conftest import Api

PARAMS = [*FILTER_PARAMS, "limit", "page", "offset", "scroll_id", "scroll", "order"]

values = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(
        [
            "2024-05-01",
            "2024-05-01 10:00:00",
            "2024-02-30",
            "9999-12-31 23:59:59",
            "0000-01-01",
            "2024-05-01T10:00:00+07:00",
            "+84899888999",
            "0899888999",
            "inbound",
            "3",
            "true",
            "",
            " ",
            "\x00",
            "%00",
            "NaN",
            "1e9",
            "١٢٣",
        ]
    ),
)
queries = st.dictionaries(st.sampled_from(PARAMS), values, max_size=6)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries)
async def test_list_never_500(api: Api, query: dict[str, str]) -> None:
    async with api.client() as client:
        r = await client.get("/v1/cdr", params=query)
    assert r.status_code in (200, 400), (query, r.status_code, r.text)
    body = r.json()
    if r.status_code == 400:
        assert body["error"]["code"] in ("invalid_parameter", "invalid_scroll_id")
        assert body["error"]["param"] in PARAMS
    else:
        assert isinstance(body["data"], list)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=300).filter(lambda k: k not in (".", "..")))
@example(key="\n/")  # was a 307 to the path without its slash
async def test_lookup_never_500(api: Api, key: str) -> None:
    async with api.client() as client:
        r = await client.get("/v1/cdr/" + quote(key, safe=""))
    assert r.status_code in (200, 404), (key, r.status_code, r.text)
    assert r.json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.text(max_size=80).filter(lambda h: h == h.strip() and all(32 <= ord(c) < 127 for c in h)))
async def test_any_authorization_header_is_401_or_ok(api: Api, header: str) -> None:
    async with api.client(tenant=None) as client:
        r = await client.get("/v1/cdr", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
