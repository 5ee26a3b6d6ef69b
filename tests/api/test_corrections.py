"""Corrections (same id, newer emitted_at) that arrive while a client reads: between the
batches of a scroll, and while a page and its total are read. The answers are checked
against the events in plain Python (tests/api/expect.py), never against SQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api
from tests.api.expect import HCM, as_record
from tests.helpers import events

_windows = itertools.count()  # each example reads its own day, apart from the others
_versions = itertools.count(1)  # every correction is newer than every earlier one
_SPACING_S = 1_000  # more than any call lasts: time_started rises with the event's index


def _day(tenant: str, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n`` events on a day of their own, and the filters that select that day."""
    base = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=2 * next(_windows))
    evs = events(n, seed=seed, tenants=(tenant,), start=base, spacing_s=_SPACING_S)
    local = "%Y-%m-%d %H:%M:%S"
    within = {
        "start_date": (base - timedelta(hours=1)).astimezone(HCM).strftime(local),
        "end_date": (base + timedelta(days=1)).astimezone(HCM).strftime(local),
    }
    return evs, within


def _corrected(event: dict[str, Any], status: str) -> dict[str, Any]:
    """A newer version of the call with another outcome (still a valid event)."""
    emitted = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_versions))
    return {
        **event,
        "status": status,
        "cause": f"CORRECTED_{status.replace(' ', '_')}",
        "billsec": 0,
        "time_answered": None,
        "recording_url": None,
        "emitted_at": emitted.isoformat(),
    }


def _selected(newest: dict[str, dict[str, Any]], status: str | None) -> list[dict[str, Any]]:
    """The API records the filters select from the newest versions, in list order."""
    records = [as_record(e) for e in newest.values()]
    chosen = [r for r in records if status is None or r["status"] == status]
    return sorted(chosen, key=lambda r: (r["time_started"], r["id"]))


statuses = st.sampled_from(["BUSY", "FAILED", "NO ANSWER"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(min_value=3, max_value=24),
    seed=st.integers(min_value=0, max_value=10_000),
    limit=st.integers(min_value=1, max_value=6),
    status=st.one_of(st.none(), statuses),
    rounds=st.lists(st.lists(st.tuples(st.integers(min_value=0, max_value=23), statuses), max_size=5), max_size=4),
    redeliver=st.booleans(),
)
async def test_corrections_between_scroll_batches(
    api: Api,
    n: int,
    seed: int,
    limit: int,
    status: str | None,
    rounds: list[list[tuple[int, str]]],
    redeliver: bool,
) -> None:
    tenant = "t1.example"
    originals, within = _day(tenant, n, seed)
    await api.insert(originals)
    newest = {e["id"]: e for e in originals}
    params = {**within, "scroll": "true", "limit": str(limit), **({"status": status} if status else {})}
    # Ids selected in every state the scroll saw: each must come exactly once.
    always = {r["id"] for r in _selected(newest, status)}
    seen: list[dict[str, Any]] = []
    async with api.client(tenant) as client:
        answer = (await client.get("/v1/cdr", params=params)).json()
        batches = 0
        while True:
            current = {r["id"]: r for r in _selected(newest, status)}
            for got in answer["data"]:
                # Every record is the newest version at the time of its batch, and
                # matches the filter as that version.
                assert got == current.get(got["id"]), (got, current.get(got["id"]))
            seen.extend(answer["data"])
            if answer["scroll_id"] is None:
                break
            if batches < len(rounds) and rounds[batches]:
                fixes = [_corrected(newest[originals[i % n]["id"]], new) for i, new in rounds[batches]]
                stale = [originals[i % n] for i, _ in rounds[batches]] if redeliver else []
                await api.insert(fixes)
                if stale:
                    await api.insert(stale)  # a late re-delivery of the old version must not win
                newest.update({e["id"]: e for e in fixes})
                always &= {r["id"] for r in _selected(newest, status)}
            batches += 1
            answer = (await client.get("/v1/cdr", params={"scroll_id": answer["scroll_id"]})).json()
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)), "a record came twice"
    assert ids == [r["id"] for r in sorted(seen, key=lambda r: (r["time_started"], r["id"]))], "out of order"
    assert always <= set(ids), f"missing {always - set(ids)}"


async def test_a_page_and_its_total_each_see_one_state_while_corrections_land(api: Api) -> None:
    """The page and its total are two reads at once; a correction inserted meanwhile may
    reach one and not the other, but each answers for a state that existed: never a mix
    of versions, never a count of a state that never was."""
    tenant = "t2.example"
    outcomes: set[tuple[bool, bool]] = set()
    for attempt in range(12):
        originals, within = _day(tenant, 30, seed=400 + attempt)
        for e in originals:
            e.update(status="BUSY", cause="USER_BUSY", billsec=0, time_answered=None, recording_url=None)
        await api.insert(originals)
        before = {e["id"]: e for e in originals}
        fixes = [_corrected(e, "FAILED") for e in originals[attempt % 3 :: 3]]
        after = {**before, **{e["id"]: e for e in fixes}}
        params = {**within, "status": "BUSY", "page": "1", "limit": "8"}
        async with api.client(tenant) as client:
            answer, _ = await asyncio.gather(client.get("/v1/cdr", params=params), api.insert(fixes))
        body = answer.json()
        old_page, new_page = _selected(before, "BUSY")[:8], _selected(after, "BUSY")[:8]
        old_total, new_total = len(_selected(before, "BUSY")), len(_selected(after, "BUSY"))
        assert body["data"] in (old_page, new_page), body["data"]
        assert body["total"] in (old_total, new_total), body["total"]
        outcomes.add((body["data"] == new_page, body["total"] == new_total))
        # Once the correction is in, both read it.
        async with api.client(tenant) as client:
            settled = (await client.get("/v1/cdr", params=params)).json()
        assert settled["data"] == new_page and settled["total"] == new_total
    assert outcomes, "no attempt ran"
