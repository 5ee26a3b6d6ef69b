"""The tenant directory (CDR_TENANTS_FILE): several tokens per tenant, a timezone, phone
region and rate limit of its own, changes picked up without a restart, bad entries
refused naming the tenant and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from cdr.api.auth import token_digest
from cdr.api.tenants import load_directory
from cdr.settings import SettingsError, load_settings
from tests.api.conftest import TOKENS, Api, Clock, replace_file, second_server

OLD, NEW, OTHER = "rotating-old-" + "o" * 20, "rotating-new-" + "n" * 20, "other-tenant-" + "x" * 20


def _directory(path: Path, tenants: dict[str, Any]) -> Path:
    replace_file(path, yaml.safe_dump({"tenants": tenants}))
    return path


async def _get(url: str, token: str, path: str = "/v1/cdr", **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        return await client.get(path, params=params)


async def test_timezone_tokens_and_rate_limit_per_tenant_and_reloaded(api: Api, tmp_path: Path) -> None:
    directory = _directory(
        tmp_path / "tenants.yaml",
        {
            "t1.example": {"tokens": [token_digest(OLD), token_digest(NEW)], "timezone": "UTC"},
            "t2.example": {"tokens": [token_digest(OTHER)], "rate_limit_per_s": 1, "rate_limit_burst": 2},
        },
    )
    clock = Clock()
    server, task, url = await second_server(api, clock=clock, api_tokens="", tenants_file=directory)
    try:
        # Both tokens of a rotation work; times are shown in the tenant's own timezone.
        default = (await _get(api.url, TOKENS["t1.example"], limit="1")).json()["data"][0]
        mine = (await _get(url, OLD, limit="1")).json()["data"][0]
        assert mine["id"] == default["id"]
        assert default["time_started"] != mine["time_started"]  # Asia/Ho_Chi_Minh vs UTC: 7 h apart
        assert (await _get(url, NEW, limit="1")).status_code == 200
        # A naive date filter is read in the tenant's timezone too.
        day = mine["time_started"][:10]
        shown = (await _get(url, OLD, start_date=day, end_date=day + " 23:59:59", limit="1000")).json()["data"]
        assert shown and all(r["time_started"].startswith(day) for r in shown)
        # t2's own rate limit: a burst of 2, then 429.
        codes = [(await _get(url, OTHER, limit="1")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        # The rotation ends: the old token is removed from the file; no restart.
        _directory(directory, {"t1.example": {"tokens": [token_digest(NEW)], "timezone": "UTC"}})
        clock.advance(60)  # past the recheck interval
        assert (await _get(url, OLD)).status_code == 401 and (await _get(url, NEW)).status_code == 200
        assert (await _get(url, OTHER)).status_code == 401
        # A broken edit keeps the directory that worked.
        replace_file(directory, "tenants:\n  t1.example:\n    tokens: [not-a-digest]\n")
        clock.advance(60)
        assert (await _get(url, NEW)).status_code == 200
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize(
    ("tenants", "needle"),
    [
        ({"acme.vn": {"tokens": ["abc"]}}, "tenant 'acme.vn': tokens: each token is the SHA-256 hex digest"),
        ({"acme.vn": {"tokens": [token_digest("a")], "timezone": "Mars/Base"}}, "tenant 'acme.vn': timezone"),
        ({"acme.vn": {"tokens": [token_digest("a")], "phone_region": "XX"}}, "tenant 'acme.vn': phone_region"),
        ({"acme.vn": {"tokens": [token_digest("a")], "rate_limit_burst": 0}}, "tenant 'acme.vn': rate_limit_burst"),
        ({"acme.vn": {"tokens": [token_digest("a")], "colour": "red"}}, "tenant 'acme.vn': colour"),
        ({"acme.vn": {}}, "tenant 'acme.vn': tokens"),
        ({"bad tenant": {"tokens": [token_digest("a")]}}, "'bad tenant' is not a tenant id"),
        (
            {"a.vn": {"tokens": [token_digest("same")]}, "b.vn": {"tokens": [token_digest("same")]}},
            "listed for 'a.vn' and 'b.vn'",
        ),
    ],
)
def test_a_bad_entry_names_the_tenant_and_field(tmp_path: Path, tenants: dict[str, Any], needle: str) -> None:
    settings = load_settings(tenants_file=_directory(tmp_path / "tenants.yaml", tenants), api_tokens="")
    with pytest.raises(SettingsError, match="CDR_TENANTS_FILE") as info:
        load_directory(settings.api, settings.common)
    assert needle in str(info.value)


def test_json_files_defaults_and_tokens_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_bytes(orjson.dumps({"tenants": {"acme.vn": {"tokens": [token_digest("a").upper()]}}}))
    settings = load_settings(tenants_file=path, api_tokens=f"env.vn:{token_digest('b')}", timezone="Asia/Bangkok")
    directory = load_directory(settings.api, settings.common)
    assert directory.digests == {token_digest("a"): "acme.vn", token_digest("b"): "env.vn"}
    assert directory.profile("acme.vn").timezone == "Asia/Bangkok" == directory.profile("env.vn").timezone
    for broken, message in ((b"{not json", "not valid JSON"), (b"[]", "expected a mapping 'tenants:'")):
        path.write_bytes(broken)
        with pytest.raises(SettingsError, match=message):
            load_directory(settings.api, settings.common)
    missing = load_settings(tenants_file=tmp_path / "missing.yaml")
    with pytest.raises(SettingsError, match="cannot read"):
        load_directory(missing.api, missing.common)
