"""GET /v1/cdr/export against the real stack: record for record what a scroll of the same
filters returns, in both formats, over 100,000+ CDRs; headers, BOM and file name; one
export per tenant at a time, the slot given back when the client goes away."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api
from tests.helpers import events

BULK = "t3.example"
BULK_SIZE = 100_500


@pytest.fixture(scope="module")
async def bulk(api: Api) -> Api:
    for start in range(0, BULK_SIZE, 20_100):
        await api.insert(events(20_100, seed=700 + start, tenants=(BULK,), spacing_s=3))
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
