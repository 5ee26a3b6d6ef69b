"""The ingestor reads each tenant's naive PBX times in the tenant's zone of the tenant
directory (``CDR_TENANTS_FILE``), re-read when it changes; unlisted tenants in CDR_TIMEZONE."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from cdr.ingest.validation import Validator
from cdr.settings import SettingsError
from cdr.tenants import ZoneDirectory

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
DIGEST = "a" * 64
LATEST = datetime(2030, 1, 1, tzinfo=UTC)


def write(path: Path, zones: dict[str, str | None]) -> None:
    """The directory file, replaced the way a Secret volume does it (a new inode)."""
    entries = {
        tenant: {"tokens": [DIGEST[:-2] + f"{n:02x}"]} | ({"timezone": z} if z else {})
        for n, (tenant, z) in enumerate(zones.items())
    }
    fresh = path.with_suffix(".new")
    fresh.write_bytes(orjson.dumps({"tenants": entries}))
    os.replace(fresh, path)


def naive_call(tenant: str, n: int = 0) -> bytes:
    return orjson.dumps(
        {
            "event": "call.ended",
            "schema_version": 1,
            "tenant_id": tenant,
            "emitted_at": "2024-03-09 10:00:21",
            "id": f"00000000-0000-0000-0000-{n:012d}",
            "sip_call_id": "",
            "cause": "NORMAL_CLEARING",
            "duration": 20,
            "billsec": 0,
            "direction": "inbound",
            "from_number": "0901",
            "to_number": "0902",
            "time_started": "2024-03-09 10:00:00",
            "time_ended": "2024-03-09 10:00:20",
            "status": "NO ANSWER",
        }
    )


def test_directory_zones_fall_back_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    write(path, {"ny.example": "America/New_York", "hcm.example": "Asia/Ho_Chi_Minh", "plain.example": None})
    directory = ZoneDirectory(HCM, path)
    zones = directory.current()
    # Only tenants whose zone differs from CDR_TIMEZONE are listed.
    assert zones.by_tenant == {"ny.example": NY}
    assert (zones.of("ny.example"), zones.of("plain.example"), zones.of("unknown.example")) == (NY, HCM, HCM)
    assert directory.current() is zones  # unchanged file: the same zones, not read again

    write(path, {"ny.example": "Asia/Tokyo"})
    reloaded = directory.current()
    assert reloaded.of("ny.example") == TOKYO

    path.write_text("tenants: {ny.example: {tokens: [nope]}}")
    assert directory.current() is reloaded  # a broken file keeps the previous zones


def test_a_bad_directory_at_start_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(f"tenants: {{ny.example: {{tokens: [{DIGEST}], timezone: Mars/Olympus}}}}")
    with pytest.raises(
        SettingsError, match=re.escape("tenant 'ny.example': timezone: unknown timezone 'Mars/Olympus'")
    ):
        ZoneDirectory(HCM, path)


async def test_a_reload_applies_to_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    write(path, {"ny.example": "America/New_York"})
    validator = Validator(ZoneDirectory(HCM, path))
    batch = [naive_call("ny.example", 1), naive_call("other.example", 2)]
    first = await validator(batch, LATEST)
    write(path, {"ny.example": "Asia/Tokyo", "other.example": "America/New_York"})
    second = await validator(batch, LATEST)
    assert first.rows.column("time_started").to_pylist() == [
        datetime(2024, 3, 9, 15, tzinfo=UTC),  # New York, EST
        datetime(2024, 3, 9, 3, tzinfo=UTC),  # unlisted: CDR_TIMEZONE
    ]
    assert second.rows.column("time_started").to_pylist() == [
        datetime(2024, 3, 9, 1, tzinfo=UTC),  # now Tokyo
        datetime(2024, 3, 9, 15, tzinfo=UTC),  # now listed: New York
    ]
