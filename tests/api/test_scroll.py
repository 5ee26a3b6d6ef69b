"""Scroll cursors: every record exactly once, in order, whatever is inserted meanwhile."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from tests.api.conftest import Api
from tests.api.expect import expected
from tests.helpers import events


async def test_scroll_10k_odd_batches_exactly_once_with_inserts_mid_scroll(api: Api) -> None:
    tenant = "t2.example"
    bulk = events(10_500, seed=21, tenants=(tenant,), start=datetime(2023, 1, 1, tzinfo=UTC), spacing_s=60)
    # Ties on time_started must be broken by id without skipping or repeating.
    tie = bulk[100]
    for e in bulk[101:160]:
        e.update(
            time_started=tie["time_started"],
            time_ended=tie["time_ended"],
            duration=tie["duration"],
            time_answered=None,
            billsec=0,
            status="NO ANSWER",
            recording_url=None,
        )
    await api.insert(bulk)
    before = expected(api.events, tenant, {"end_date": "2023-12-31"})
    assert len(before) >= 10_000
    rng = random.Random(3)

    seen: list[dict[str, Any]] = []
    batches = 0
    async with api.client(tenant) as client:
        r = await client.get("/v1/cdr", params={"scroll": "true", "limit": "337", "end_date": "2023-12-31"})
        while True:
            assert r.status_code == 200, r.text
            body = r.json()
            seen.extend(body["data"])
            batches += 1
            if batches == 5:
                # New calls land all over the range while the scroll is under way.
                late = events(
                    400,
                    seed=22,
                    tenants=(tenant,),
                    start=datetime(2023, 1, 1, 0, 0, 17, tzinfo=UTC),
                    spacing_s=rng.choice([1_530, 1_570]),
                )
                await api.insert(late)
            if body["scroll_id"] is None:
                break
            assert len(body["data"]) == 337
            r = await client.get("/v1/cdr", params={"scroll_id": body["scroll_id"], "end_date": "2023-12-31"})

    ids = [record["id"] for record in seen]
    assert len(ids) == len(set(ids)), "a record came twice"
    assert {rec["id"] for rec in before} <= set(ids), "a pre-existing record was skipped"
    after = expected(api.events, tenant, {"end_date": "2023-12-31"})
    assert seen == [rec for rec in after if rec["id"] in set(ids)], "not in sort order"
    assert batches == -(-len(seen) // 337)


async def test_last_batch_has_null_scroll_id(api: Api) -> None:
    want = expected(api.events, "t1.example", {"status": "FAILED"})
    async with api.client() as client:
        body = (
            await client.get("/v1/cdr", params={"status": "failed", "scroll": "true", "limit": str(len(want))})
        ).json()
        bigger = (
            await client.get("/v1/cdr", params={"status": "failed", "scroll": "true", "limit": str(len(want) + 1)})
        ).json()
    # Exactly `limit` left: the server looks one ahead, so it knows there is no more.
    assert body["data"] == want and body["scroll_id"] is None
    assert bigger["data"] == want and bigger["scroll_id"] is None


async def test_limit_changes_batch_size_mid_scroll(api: Api) -> None:
    want = expected(api.events, "t1.example", {})
    async with api.client() as client:
        first = (await client.get("/v1/cdr", params={"scroll": "true", "limit": "7"})).json()
        second = (await client.get("/v1/cdr", params={"scroll_id": first["scroll_id"], "limit": "11"})).json()
        third = (await client.get("/v1/cdr", params={"scroll_id": second["scroll_id"]})).json()
    # Without limit, a continuation keeps the batch size the cursor was issued with.
    assert first["data"] + second["data"] + third["data"] == want[: 7 + 11 + 11]


async def test_scroll_across_many_time_windows_both_orders(api: Api) -> None:
    """Records sparse in time (several months) make batches cross the read windows."""
    tenant = "t3.example"
    # A first scroll sees only a late call: the API remembers that edge of the tenant's
    # data, and older calls inserted afterwards must still be read.
    await api.insert(events(1, seed=43, tenants=(tenant,), start=datetime(2022, 12, 25, tzinfo=UTC)))
    async with api.client(tenant) as client:
        assert len((await client.get("/v1/cdr", params={"scroll": "true"})).json()["data"]) >= 1
    sparse = events(150, seed=41, tenants=(tenant,), start=datetime(2022, 1, 1, tzinfo=UTC), spacing_s=86_400)
    sparse += events(4, seed=42, tenants=(tenant,), start=datetime(2022, 11, 20, tzinfo=UTC), spacing_s=3_600)
    await api.insert(sparse)
    params = {"end_date": "2022-12-31"}
    want = expected(api.events, tenant, params)
    assert len(want) == 155
    for order, reference in (("asc", want), ("desc", want[::-1])):
        seen: list[dict[str, Any]] = []
        async with api.client(tenant) as client:
            body = (
                await client.get("/v1/cdr", params={**params, "scroll": "true", "limit": "7", "order": order})
            ).json()
            seen.extend(body["data"])
            while body["scroll_id"]:
                body = (await client.get("/v1/cdr", params={"scroll_id": body["scroll_id"]})).json()
                seen.extend(body["data"])
        assert seen == reference, order
    async with api.client(tenant) as client:
        window = (
            await client.get(
                "/v1/cdr",
                params={"start_date": "2022-03-01", "end_date": "2022-07-01", "scroll": "true", "limit": "1000"},
            )
        ).json()
    assert window["data"] == expected(api.events, tenant, {"start_date": "2022-03-01", "end_date": "2022-07-01"})
