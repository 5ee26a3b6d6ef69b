"""Each number's canonical form, as the ingestor stores it and the search looks for it:
the fast paths give phonenumbers' answer, the batch gets both columns in each tenant's
region (the tenant directory's phone_region, else CDR_PHONE_REGION)."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import phonenumbers
import pytest

from cdr.ingest.validation import validate_batch
from cdr.phones import PhoneRegions, _parsed, _region, canonical
from cdr.tenants import ZoneDirectory
from tests.unit.test_tenant_zones import DIGEST, naive_call

LATEST = datetime(2030, 1, 1, tzinfo=UTC)


# The regions with fast paths (the others read every number with phonenumbers).
_FAST = [region for region in sorted(phonenumbers.SUPPORTED_REGIONS) if _region(region) is not None]


@pytest.mark.parametrize("region", _FAST)
def test_the_fast_paths_give_phonenumbers_answer(region: str) -> None:
    meta = _region(region)
    assert meta is not None
    rng = random.Random(region)
    for _ in range(60):
        length = rng.choice(sorted(meta.lengths))
        national = "".join(str(rng.randrange(10)) for _ in range(length))
        for form in (meta.prefix + national, "0" + national, "+" + meta.code + national, meta.code + national):
            assert canonical(form, region) == _parsed(form, region), form


@pytest.mark.parametrize(
    ("logged", "region", "stored"),
    [
        ("0899888999", "VN", "+84899888999"),
        ("84899888999", "VN", "+84899888999"),
        ("+84899888999", "VN", "+84899888999"),
        ("+840899888999", "VN", "+84899888999"),  # the trunk 0 after the country code
        ("101", "VN", "101"),  # an extension is not a phone number: as it is
        ("19001919", "VN", "+8419001919"),
        ("6502530000", "US", "+16502530000"),
        ("01012345678", "JP", "+12345678"),  # 010 is Japan's international prefix: a call abroad
        ("", "VN", ""),
        ("anonymous", "VN", "anonymous"),
    ],
)
def test_canonical_forms(logged: str, region: str, stored: str) -> None:
    assert canonical(logged, region) == stored


def call(tenant: str, n: int, from_number: str, to_number: str) -> bytes:
    event = orjson.loads(naive_call(tenant, n))
    return orjson.dumps({**event, "from_number": from_number, "to_number": to_number})


def test_a_batch_gets_each_tenants_canonical_numbers(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    entries = {"us.example": {"tokens": [DIGEST], "phone_region": "us"}}
    path.write_bytes(orjson.dumps({"tenants": entries}))
    zones = ZoneDirectory(ZoneInfo("Asia/Ho_Chi_Minh"), path, phone_region="VN").current()
    batch = [
        call("us.example", 1, "6502530000", "101"),
        call("vn.example", 2, "0899888999", "+84899888999"),
        b'{"not": "a call"}',
    ]
    verdicts = validate_batch(batch, zones, LATEST)
    assert verdicts.rows.column("from_e164").to_pylist() == ["+16502530000", "+84899888999"]
    assert verdicts.rows.column("to_e164").to_pylist() == ["101", "+84899888999"]
    assert verdicts.rows.column("from_number").to_pylist() == ["6502530000", "0899888999"]  # as sent
    assert list(verdicts.invalid) == [2]


def test_a_changed_phone_region_changes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_bytes(orjson.dumps({"tenants": {"a.example": {"tokens": [DIGEST]}}}))
    directory = ZoneDirectory(ZoneInfo("UTC"), path, phone_region="VN")
    first = directory.current()
    fresh = path.with_suffix(".new")
    fresh.write_bytes(orjson.dumps({"tenants": {"a.example": {"tokens": [DIGEST], "phone_region": "GB"}}}))
    os.replace(fresh, path)
    second = directory.current()
    assert (first.phones.of("a.example"), second.phones.of("a.example")) == ("VN", "GB")
    assert second != first
    assert PhoneRegions().of("anyone") == "VN"
