"""GET /v1/cdr/stats: the same figures as plain Python computes from a scroll of the same
filters, for every group_by, including after re-sent and corrected events."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.helpers import events

TENANT = "t2.example"
GROUPINGS = ("hour", "day", "month", "extension", "status", "direction", "cause")


@pytest.fixture(scope="module")
async def stats_api(api: Api) -> Api:
    """Calls over four months besides the seed's few days, so month groups are several."""
    await api.insert(events(300, seed=741, tenants=(TENANT,), start=datetime(2024, 6, 1, tzinfo=UTC), spacing_s=28_800))
    return api


def _group(record: dict[str, Any], group_by: str) -> str | int:
    started: str = record["time_started"]  # YYYY-MM-DD HH:MM:SS in the tenant's timezone
    keys: dict[str, Any] = {
        "hour": started[:13] + ":00:00",
        "day": started[:10],
        "month": started[:7],
    }
    value: str | int = keys[group_by] if group_by in keys else record[group_by]
    return value


def _quantile(values: list[int], level: float) -> int:
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def expected_stats(records: list[dict[str, Any]], group_by: str) -> list[dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[_group(record, group_by)].append(record)
    out = []
    for key in sorted(groups):
        members = groups[key]
        answered = [r for r in members if r["status"] == "ANSWERED"]
        durations = [r["duration"] for r in members]
        out.append(
            {
                "group": key,
                "calls": len(members),
                "answered": len(answered),
                "asr": round(len(answered) / len(members), 4),
                "acd": round(sum(r["billsec"] for r in answered) / len(answered), 2) if answered else None,
                "total_billsec": sum(r["billsec"] for r in members),
                "duration_p50": _quantile(durations, 0.5),
                "duration_p90": _quantile(durations, 0.9),
                "duration_p99": _quantile(durations, 0.99),
            }
        )
    return out


async def _stats(api: Api, params: dict[str, str]) -> dict[str, Any]:
    async with api.client(TENANT) as client:
        response = await client.get("/v1/cdr/stats", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("group_by", GROUPINGS)
async def test_stats_equal_plain_python_over_the_scroll(stats_api: Api, group_by: str) -> None:
    answer = await _stats(stats_api, {"group_by": group_by})
    assert answer["group_by"] == group_by
    want = expected_stats(await stats_api.scroll(TENANT, {}), group_by)
    assert len(want) > 1
    assert answer["data"] == want


async def test_stats_follow_filters_and_corrections(stats_api: Api) -> None:
    filters = {"direction": "inbound", "start_date": "2024-05-02"}
    before = await _stats(stats_api, {**filters, "group_by": "status"})
    # Re-sent events and corrections: some calls turn ANSWERED -> FAILED with a new duration.
    mine = [e for e in stats_api.events if e["tenant_id"] == TENANT][:200]
    corrected = [
        {
            **e,
            "status": "FAILED",
            "cause": "CORRECTED",
            "billsec": 0,
            "duration": 7,
            "time_answered": None,
            "time_ended": (datetime.fromisoformat(e["time_started"]) + timedelta(seconds=7)).isoformat(),
            "recording_url": None,
            "emitted_at": "2030-01-01T00:00:00+00:00",
        }
        for e in mine
        if e["status"] == "ANSWERED"
    ]
    assert corrected
    await stats_api.insert(mine)  # re-sent unchanged
    await stats_api.insert(corrected)
    for group_by in ("status", "cause", "day"):
        answer = await _stats(stats_api, {**filters, "group_by": group_by})
        assert answer["data"] == expected_stats(await stats_api.scroll(TENANT, filters), group_by)
    after = await _stats(stats_api, {**filters, "group_by": "status"})
    assert sum(g["calls"] for g in after["data"]) == sum(g["calls"] for g in before["data"])  # nothing counted twice
    assert after != before


async def test_default_grouping_and_bad_parameters(stats_api: Api) -> None:
    assert (await _stats(stats_api, {}))["group_by"] == "day"
    async with stats_api.client(TENANT) as client:
        for name, value in {"group_by": "week", "status": "", "min_duration": "x", "limit": "5"}.items():
            response = await client.get("/v1/cdr/stats", params={name: value})
            if name == "limit":
                assert response.status_code == 200  # not a stats parameter: ignored, as on the list
                continue
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["param"] == name
