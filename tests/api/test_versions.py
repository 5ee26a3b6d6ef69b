"""Re-sent and corrected events: every API read sees one record, the newest version."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.helpers import events


async def test_reads_see_only_the_newest_version(api: Api) -> None:
    tenant = "t3.example"
    original = events(3, seed=31, tenants=(tenant,))
    for e in original:
        e.update(status="BUSY", cause="USER_BUSY", billsec=0, time_answered=None, recording_url=None)
    corrected = [
        {**e, "status": "FAILED", "cause": "CORRECTED", "emitted_at": "2030-01-01T00:00:00+00:00"} for e in original
    ]
    await api.insert(original)
    await api.insert(corrected)
    await api.insert(original)  # a late re-delivery of the old version must not win
    async with api.client(tenant) as client:
        page = (await client.get("/v1/cdr", params={"limit": "100"})).json()
        stale = (await client.get("/v1/cdr", params={"limit": "100", "status": "BUSY"})).json()
        fresh = (await client.get("/v1/cdr", params={"limit": "100", "status": "FAILED"})).json()
        scroll = (await client.get("/v1/cdr", params={"scroll": "true", "limit": "2"})).json()
        rest = (await client.get("/v1/cdr", params={"scroll_id": scroll["scroll_id"]})).json()
        one = (await client.get(f"/v1/cdr/{original[0]['id']}")).json()
    assert page["total"] == 3 and {r["cause"] for r in page["data"]} == {"CORRECTED"}
    assert stale["total"] == 0 and stale["data"] == []
    assert fresh["total"] == 3
    assert len(scroll["data"] + rest["data"]) == 3 and rest["scroll_id"] is None
    assert one["cause"] == "CORRECTED" and one["status"] == "FAILED"
