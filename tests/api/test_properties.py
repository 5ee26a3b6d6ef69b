"""Property-based: no query string, path or header yields a 500 or a non-JSON error.
The query string parser is pure, so it is checked directly, on many inputs; what it
accepts is then checked against the live API and store on fewer."""

from __future__ import annotations

from urllib.parse import quote
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from cdr.api.errors import InvalidParameter, InvalidScrollId
from cdr.api.params import FILTER_PARAMS, Context, Limits, ListRequest, list_params, parse_list_request
from cdr.settings import load_settings
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


_DEFAULTS = load_settings()
LIMITS = Limits(_DEFAULTS.api.default_limit, _DEFAULTS.api.max_limit, _DEFAULTS.api.max_offset)
LIST_PARAMS = list_params(LIMITS)
# The service's default tenant and one far from it: dates and numbers are read in each.
CONTEXTS = st.sampled_from(
    [Context(_DEFAULTS.common.zone, _DEFAULTS.common.phone_region), Context(ZoneInfo("Pacific/Kiritimati"), "US")]
)


def _parsed(query: dict[str, str], context: Context) -> ListRequest | InvalidParameter | InvalidScrollId:
    try:
        return parse_list_request(QueryParams(query), LIST_PARAMS, context, LIMITS)
    except (InvalidParameter, InvalidScrollId) as error:
        return error


@settings(max_examples=600, deadline=None)
@given(query=queries, context=CONTEXTS)
def test_the_list_parser_accepts_or_names_the_parameter(query: dict[str, str], context: Context) -> None:
    """Any query string is a request or a 400 naming one of the parameters; nothing else
    escapes the parser (a ValueError or OverflowError would be a 500)."""
    parsed = _parsed(query, context)
    if isinstance(parsed, ListRequest):
        assert parsed.limit >= 1 and 0 <= parsed.offset <= LIMITS.max_offset
    else:
        assert parsed.param in PARAMS, (query, parsed)


_MOMENTS = st.sampled_from(
    [
        "1900-01-01",
        "1900-01-01 07:00:00",
        "2299-12-31",
        "2299-12-31T23:59:59Z",
        "2024-05-01",
        "2024-05-01T10:00:00+07:00",
    ]
)
_WHOLE = st.integers(min_value=0, max_value=4_294_967_295).map(str)
_TEXT = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)
_DIGITS = st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True)
# Values each parameter accepts, extremes included; combinations may still break a
# cross-parameter rule (end before start), which the test leaves out.
accepted = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(("start_date", "end_date", "start_date_ended", "end_date_ended"), _MOMENTS),
        **dict.fromkeys(("duration", "min_duration", "max_duration"), _WHOLE),
        **dict.fromkeys(("cause", "extension", "recordingfile", "status"), _TEXT),
        **dict.fromkeys(("phone", "phone_prefix"), _DIGITS),
        "direction": st.sampled_from(["inbound", "OUTBOUND", "Local", "1", "3"]),
        "limit": st.integers(min_value=1, max_value=LIMITS.max_limit).map(str),
        "page": st.integers(min_value=1, max_value=3).map(str),
        "offset": st.integers(min_value=0, max_value=LIMITS.max_offset).map(str),
        "scroll": st.sampled_from(["true", "FALSE", "1", "no"]),
        "order": st.sampled_from(["asc", "DESC"]),
    },
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=accepted)
async def test_a_query_the_parser_accepts_is_served(api: Api, query: dict[str, str]) -> None:
    """What the parser lets through, extreme dates and numbers and any text included,
    reaches the store and is answered, not a 500."""
    assume(isinstance(_parsed(query, Context(api.settings.common.zone, api.settings.common.phone_region)), ListRequest))
    async with api.client() as client:
        r = await client.get("/v1/cdr", params=query)
    assert r.status_code == 200, (query, r.status_code, r.text)
    assert isinstance(r.json()["data"], list)


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
