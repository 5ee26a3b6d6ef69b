"""Export speed and memory, and call statistics: GET /v1/cdr/export of ten tenants one after another (~1 M
CDRs of the 10 M-row store of `bench/api.py`), uncompressed and again with gzip (the
client decompressing), beside the baseline of the same run:
the same records read through the list API's scroll (1,000 per batch). Also the list
API's p99 while an export streams, beside the same requests idle. Prints rows/s and
the API process's RSS growth while exporting; then GET /v1/cdr/stats over one tenant's
~106,000 calls (p50 of 50 requests per group_by).

    python bench/api.py            # once, to build the store (or --reuse it)
    python bench/export.py [--tenants 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import httpx
import psutil

sys.path.insert(0, os.path.dirname(__file__))
from api import OPS_PORT, PORT, STORE, api_environment, bring_up_to_date, start, stop, token, wait_ready
from common import machine, percentiles


async def export_rows(
    client: httpx.AsyncClient, tenant: str, rss: list[int], process: psutil.Process, encoding: str = "identity"
) -> int:
    lines = 0
    headers = {"Authorization": f"Bearer {token(tenant)}", "Accept-Encoding": encoding}
    async with client.stream("GET", "/v1/cdr/export", params={"format": "ndjson"}, headers=headers) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            lines += chunk.count(b"\n")
            rss.append(process.memory_info().rss)
    return lines


async def scroll_rows(client: httpx.AsyncClient, tenant: str) -> int:
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    answer = (await client.get("/v1/cdr", params={"scroll": "true", "limit": "1000"}, headers=headers)).json()
    rows = len(answer["data"])
    while answer["scroll_id"]:
        answer = (await client.get("/v1/cdr", params={"scroll_id": answer["scroll_id"]}, headers=headers)).json()
        rows += len(answer["data"])
    return rows


async def list_latencies(
    client: httpx.AsyncClient, tenant: str, count: int, path: str = "/v1/cdr", params: dict[str, str] | None = None
) -> list[float]:
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    taken = []
    for _ in range(count):
        began = time.perf_counter()
        (await client.get(path, params=params or {"status": "BUSY"}, headers=headers)).raise_for_status()
        taken.append((time.perf_counter() - began) * 1000)
    return taken


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()
    if not STORE.exists():
        raise SystemExit(f"no store at {STORE}: run bench/api.py first")
    await bring_up_to_date()
    tenants, env = api_environment()
    api = start("api", env)
    try:
        await wait_ready(f"http://127.0.0.1:{OPS_PORT}")
        process = psutil.Process(api.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=300) as client:
            await scroll_rows(client, tenants[-1])  # warm up
            chosen = tenants[: args.tenants]
            began = time.perf_counter()
            scrolled = sum([await scroll_rows(client, t) for t in chosen])
            scroll_s = time.perf_counter() - began
            idle_rss = process.memory_info().rss
            rss: list[int] = []
            began = time.perf_counter()
            exported = sum([await export_rows(client, t, rss, process) for t in chosen])
            export_s = time.perf_counter() - began
            began = time.perf_counter()
            packed = sum([await export_rows(client, t, rss, process, "gzip") for t in chosen])
            packed_s = time.perf_counter() - began
            idle_list = await list_latencies(client, tenants[-2], 200)
            streaming = asyncio.create_task(export_rows(client, tenants[-1], [], process))
            busy_list = await list_latencies(client, tenants[-2], 200)
            await streaming
            stats = {
                group: await list_latencies(client, tenants[-3], 50, "/v1/cdr/stats", {"group_by": group})
                for group in ("day", "status", "extension")
            }
    finally:
        stop(api)
    assert exported == scrolled == packed, (exported, scrolled, packed)
    print(f"{machine()}; {exported:,} CDRs of {len(chosen)} tenants")
    print(f"  scroll (baseline, 1,000 per batch) {scrolled / scroll_s:10,.0f} rows/s")
    print(f"  export, ndjson                     {exported / export_s:10,.0f} rows/s  x{scroll_s / export_s:.1f}")
    print(f"  export, ndjson, gzip               {packed / packed_s:10,.0f} rows/s  x{scroll_s / packed_s:.1f}")
    print(
        f"  API RSS: {idle_rss / 2**20:.0f} MB before, peak {max(rss) / 2**20:.0f} MB while exporting "
        f"(+{(max(rss) - idle_rss) / 2**20:.0f} MB)"
    )
    idle, busy = percentiles(idle_list), percentiles(busy_list)
    for group, taken in stats.items():
        print(f"  stats over one tenant's calls, group_by={group:<9} p50 {percentiles(taken)['p50']:6.1f} ms")
    ratio = busy["p99"] / idle["p99"]
    print(f"  list p99 idle {idle['p99']:.1f} ms, during an export {busy['p99']:.1f} ms (x{ratio:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
