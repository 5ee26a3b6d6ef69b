"""The API's short reads take their blocks from the engine's cache of decompressed blocks
(README, "GET /v1/cdr — list"): the next request for what a tenant read before
decompresses none of it again."""

from __future__ import annotations

import pytest

from cdr.store import Store
from tests.api.conftest import Api

_EVENTS = ("UncompressedCacheHits", "UncompressedCacheMisses")


async def _cache_events(store: Store) -> dict[str, int]:
    rows = await store.query(
        "SELECT event, value FROM system.events WHERE event IN {names:Array(String)}", {"names": list(_EVENTS)}
    )
    counts = {name: 0 for name in _EVENTS}
    counts.update({str(name): int(value) for name, value in rows})
    return counts


@pytest.mark.parametrize("path", ["/v1/cdr?page=1&limit=50", "/v1/cdr?scroll=true&limit=50&order=desc", "phone"])
async def test_a_read_asked_again_is_served_from_the_cache(api: Api, path: str) -> None:
    if path == "phone":  # a number of the tenant's: its keys, then its records
        path = f"/v1/cdr?phone={next(e['from_number'] for e in api.events if e['tenant_id'] == 't1.example')}"
    async with api.client() as client:
        first = await client.get(path)
        before = await _cache_events(api.store)
        again = await client.get(path)
        after = await _cache_events(api.store)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["data"]
    assert again.json()["data"] == first.json()["data"]
    assert after["UncompressedCacheHits"] > before["UncompressedCacheHits"]
    assert after["UncompressedCacheMisses"] == before["UncompressedCacheMisses"]
