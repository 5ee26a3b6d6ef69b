"""API latency over HTTP: 10 M CDRs in 100 tenants, 1 and 8 concurrent clients, idle and
while events are ingested.

Loads the embedded store by the fastest correct path (ClickHouse generates the rows
itself: INSERT ... SELECT FROM numbers()), serves it with `cdr api` in its own process,
and measures each request kind with 1 client and with 8; the baselines measured in the
same run are 1 client (for the 8-client throughput), deep-vs-shallow pairs (scroll
batch 1 vs 1,000, offset page 1 vs 1,000) and idle (for latency under ingest). Then
`cdr run` serves the same store while `cdr simulate` publishes --ingest-rate events/s
through a local Kafka broker, and list and get-by-id are measured again beside the
same process idle.

Beside each 1-client figure, the same reads straight on the store client, no HTTP
("direct"): before the server starts, this process serves the same requests through the
app in-process, notes the SQL and parameters every request ran, and then times those
reads alone on the store (`Store.query`; reads the app ran at once, at once again),
so the API's own overhead is the ratio of the two.

    python bench/api.py [--rows 10000000] [--requests 400] [--reuse] [--ingest-rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from common import OUT, kafka, machine, percentiles

from cdr.api.app import create_app
from cdr.api.auth import token_digest
from cdr.api.cursor import CursorCodec, Position
from cdr.importer import merge_months
from cdr.metrics import Metrics
from cdr.settings import load_settings
from cdr.store import Store, open_store
from cdr.store.client import Param, Row
from cdr.store.migrations import migrate

TENANTS = 100
SECRET = "bench-cursor-secret-0123456789abcdef"
PORT = 18_123
OPS_PORT = 18_124  # `cdr api` serves /readyz and /metrics here; `cdr run` on PORT
STORE = OUT / "api-store"
ACTIVE_PARTS = "SELECT count() FROM system.parts WHERE database = 'cdr' AND table = 'cdr' AND active"

# Every row is a plausible call; fields derive from hashes of the row number.
GENERATE = """
INSERT INTO cdr.cdr (tenant_id, id, sip_call_id, cause, duration, billsec, direction, recording_url,
                     recording_file, extension, from_number, to_number, receive_dest, time_started,
                     time_answered, time_ended, status, emitted_at, from_e164, to_e164)
SELECT tenant_id, id, sip_call_id, cause, duration, billsec, direction, recording_url, recording_file,
       extension, from_number, to_number, receive_dest, time_started, time_answered, time_ended, status,
       time_ended AS emitted_at,
       -- cdr.phones.canonical in Vietnam of these shapes: 0 + national, a hotline, an extension
       multiIf(startsWith(from_number, '0'), concat('+84', substring(from_number, 2)),
               length(from_number) >= 8, concat('+84', from_number), from_number) AS from_e164,
       multiIf(startsWith(to_number, '0'), concat('+84', substring(to_number, 2)),
               length(to_number) >= 8, concat('+84', to_number), to_number) AS to_e164
FROM (
  SELECT
    n,
    concat('tenant', leftPad(toString(n % 100), 3, '0'), '.pbx.vn') AS tenant_id,
    generateUUIDv4(n) AS id,
    concat(lower(hex(sipHash64(n, 0))), '@', tenant_id) AS sip_call_id,
    sipHash64(n, 1) % 100 AS roll,
    multiIf(roll < 62, 'ANSWERED', roll < 81, 'NO ANSWER', roll < 92, 'BUSY', 'FAILED') AS status,
    multiIf(roll < 62, 'NORMAL_CLEARING', roll < 79, 'NO_ANSWER', roll < 81, 'ORIGINATOR_CANCEL',
            roll < 92, 'USER_BUSY', roll < 97, 'CALL_REJECTED', 'NO_ROUTE_DESTINATION') AS cause,
    sipHash64(n, 2) % 10 AS d,
    toUInt8(multiIf(d < 5, 1, d < 9, 2, 3)) AS direction,
    toUInt32(2 + sipHash64(n, 3) % 28) AS ring,
    toUInt32(if(status = 'ANSWERED', 5 + sipHash64(n, 4) % 895, 0)) AS billsec,
    ring + billsec AS duration,
    toDateTime64('2024-01-01 00:00:00', 3, 'UTC')
      + toIntervalMillisecond(intDiv(n, 100) * 315000 + sipHash64(n, 5) % 315000) AS time_started,
    if(status = 'ANSWERED', time_started + toIntervalSecond(ring), NULL) AS time_answered,
    time_started + toIntervalSecond(duration) AS time_ended,
    concat('09', leftPad(toString(sipHash64(n, 6) % 100000000), 8, '0')) AS mobile,
    ['19001919', '18006868', '02873001234', '02437123456'][1 + sipHash64(n, 7) % 4] AS hotline,
    toString(101 + sipHash64(n, 8) % 30) AS extension,
    multiIf(direction = 1, mobile, direction = 2, hotline, extension) AS from_number,
    multiIf(direction = 1, hotline, direction = 2, mobile, toString(101 + sipHash64(n, 9) % 30)) AS to_number,
    if(direction = 1, ['', '', 'ringgroup-sales', 'ringgroup-support', 'queue-billing'][1 + sipHash64(n, 10) % 5], '')
      AS receive_dest,
    if(status = 'ANSWERED' AND sipHash64(n, 11) % 10 < 8, concat(toString(id), '.wav'), '') AS recording_file,
    if(recording_file = '', '', concat('https://recording.', tenant_id, '/', recording_file)) AS recording_url
  FROM (SELECT number AS n FROM numbers({first:UInt64}, {rows:UInt64}))
)
"""
BATCH = 20_000  # rows per insert, as the ingestor's batches arrive


async def load(rows: int, *, merge: bool) -> None:
    """``rows`` calls in inserts of BATCH in time order, as a backfill through Kafka
    stores them (several parts per month; ClickHouse merges some meanwhile); with
    ``merge``, then each month into one part, as `cdr import` does when it finishes."""
    shutil.rmtree(STORE, ignore_errors=True)
    store = open_store(load_settings(data_dir=STORE, clickhouse_url=None).clickhouse)
    await migrate(store)
    began = time.perf_counter()
    for first in range(0, rows, BATCH):
        await store.command(GENERATE, {"first": first, "rows": min(BATCH, rows - first)})
    elapsed = time.perf_counter() - began
    parts = await store.query(ACTIVE_PARTS)
    print(f"loaded {rows:,} CDRs in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s), {parts[0][0]} active parts")
    if merge:
        began = time.perf_counter()
        months = await store.query("SELECT DISTINCT toYYYYMM(time_started) FROM cdr.cdr ORDER BY 1")
        await merge_months(store, [int(m) for (m,) in months])
        parts = await store.query(ACTIVE_PARTS)
        print(
            f"merged each month into one part (as cdr import does): {parts[0][0]} active parts,"
            f" {time.perf_counter() - began:.1f} s"
        )
    await store.close()


async def bring_up_to_date() -> None:
    """A reused store may predate a migration (new ones backfill what is stored)."""
    store = open_store(load_settings(data_dir=STORE, clickhouse_url=None).clickhouse)
    try:
        applied = await migrate(store)
    finally:
        await store.close()
    if applied:
        print("migrated the reused store:", ", ".join(m.name for m in applied))


def api_environment() -> tuple[list[str], dict[str, str]]:
    """The bench tenants, and the environment of `cdr api` / `cdr run` on the bench store
    (a token file with a token per tenant)."""
    tenants = [f"tenant{n:03d}.pbx.vn" for n in range(TENANTS)]
    tokens_file = OUT / "tokens.txt"
    tokens_file.write_text("".join(f"{t}:{token_digest(token(t))}\n" for t in tenants))
    env = {
        **os.environ,
        "CDR_DATA_DIR": str(STORE),
        "CDR_API_PORT": str(PORT),
        "CDR_OPS_PORT": str(OPS_PORT),
        "CDR_API_TOKENS_FILE": str(tokens_file),
        "CDR_CURSOR_SECRET": SECRET,
        "CDR_LOG_LEVEL": "WARNING",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    return tenants, env


async def sample(rows: int) -> dict[str, Any]:
    """Ids, Call-IDs, phones and deep cursor positions to request, read before the API starts."""
    store = open_store(load_settings(data_dir=STORE, clickhouse_url=None).clickhouse)
    picks = await store.query(
        "SELECT tenant_id, toString(id), sip_call_id, if(direction = 1, from_number, to_number) "
        "FROM cdr.cdr WHERE rand() % {m:UInt32} = 0 LIMIT 2000",
        {"m": max(rows // 20_000, 1)},
    )
    deep = await store.query(
        "SELECT tenant_id, toUnixTimestamp64Milli(time_started), toString(id) FROM cdr.cdr FINAL "
        # 20 tenants: 8 clients on fewer would meet the per-tenant concurrency limit (429).
        "WHERE tenant_id IN (SELECT concat('tenant', leftPad(toString(number * 5 + 2), 3, '0'), '.pbx.vn') "
        "FROM numbers(20)) "
        # Batch 1,000 of 100 where a tenant has that many calls (10 M); at fewer rows, its last.
        "ORDER BY tenant_id, time_started, id LIMIT 1 OFFSET {deep:UInt32} BY tenant_id",
        {"deep": min(99_899, rows // TENANTS - 101)},
    )
    await store.close()
    return {"picks": picks, "deep": deep}


Reads = list[list[tuple[str, dict[str, Param]]]]  # a request's reads: groups run at once, one after another


class RecordingStore(Store):
    """The store, noting each read the API runs on it, and which ran at once: a read that
    starts while another is running joins its group."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, database="cdr")
        self.reads: Reads | None = None  # None: not noting
        self._running = 0

    async def query(self, sql: str, params: Any = None, *, health: bool = False) -> list[Row]:
        if health or self.reads is None:
            return await super().query(sql, params, health=health)
        if not self._running or not self.reads:
            self.reads.append([])
        self.reads[-1].append((sql, dict(params or {})))
        self._running += 1
        try:
            return await super().query(sql, params, health=health)
        finally:
            self._running -= 1


async def direct_reads(scenarios: list[Any], requests: int, tokens_file: str) -> dict[str, dict[str, Any]]:
    """Per kind: each request's reads as the API runs them, captured through the app
    in-process, then timed on the store alone (one request at a time)."""
    store = RecordingStore(f"chdb://{STORE}")
    settings = load_settings(
        data_dir=STORE, clickhouse_url=None, api_tokens_file=tokens_file, cursor_secret=SECRET, log_level="WARNING"
    )
    app = create_app(settings.api, settings.common, store, Metrics())
    results: dict[str, dict[str, Any]] = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for name, make in scenarios:
                captured: list[Reads] = []
                for _ in range(16 + requests):
                    tenant, url = make()
                    store.reads = []
                    answer = await client.get(url, headers={"Authorization": f"Bearer {token(tenant)}"})
                    if answer.status_code != 200:
                        raise SystemExit(f"{name}: {url} answered {answer.status_code} in-process")
                    captured.append(store.reads)
                store.reads = None
                latencies = []
                for reads in captured[16:]:  # the first 16 warm up, as over HTTP
                    began = time.perf_counter()
                    for group in reads:
                        await asyncio.gather(*(store.query(sql, params) for sql, params in group))
                    latencies.append((time.perf_counter() - began) * 1000)
                results[name] = percentiles(latencies)
                print(
                    f"  {name + ' [direct, store only]':<34} p50 {results[name]['p50']:7.1f} ms  "
                    f"p99 {results[name]['p99']:7.1f}"
                )
    finally:
        await store.close()
    return results


def token(tenant: str) -> str:
    return f"bench-token-{tenant}"


async def run_scenario(name: str, make: Any, requests: int, clients: int = 8) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            tenant, url = make()
            began = time.perf_counter()
            r = await client.get(url, headers={"Authorization": f"Bearer {token(tenant)}"})
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", limits=limits, timeout=60) as client:
        for _ in range(16):  # warm up
            tenant, url = make()
            await client.get(url, headers={"Authorization": f"Bearer {token(tenant)}"})
        began = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        elapsed = time.perf_counter() - began
    result = {"name": name, **percentiles(latencies), "rps": requests / elapsed, "statuses": statuses}
    print(
        f"  {name:<34} p50 {result['p50']:7.1f} ms  p95 {result['p95']:7.1f}  p99 {result['p99']:7.1f}  "
        f"{result['rps']:6.1f} req/s  {statuses}"
    )
    return result


async def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url``/readyz answers 200 (at most 120 s); stops early if ``process`` exits."""
    async with httpx.AsyncClient() as probe:
        for _ in range(1200):
            if process is not None and process.poll() is not None:
                raise SystemExit(f"{process.args} exited with {process.returncode}")
            try:
                if (await probe.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


async def stored_total(url: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("cdr_events_stored_total "):
            return float(line.split()[1])
    return 0.0


def start(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cdr.cli", command], env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=120)


def row(r: dict[str, Any]) -> str:
    return f"{r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--reuse", action="store_true", help="keep the store of an earlier run")
    parser.add_argument(
        "--unmerged", action="store_true", help="measure the store as loaded, before cdr import's merge of its months"
    )
    parser.add_argument("--ingest-rate", type=float, default=5_000, help="events/s published during the last phase")
    parser.add_argument("--only-ingest", action="store_true", help="only the phase under ingest (cdr run)")
    parser.add_argument("--kinds", default="", help="only the request kinds whose name contains this text")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not (args.reuse and STORE.exists()):
        await load(args.rows, merge=not args.unmerged)
    else:
        await bring_up_to_date()
    samples = await sample(args.rows)
    tenants, env = api_environment()
    url = f"http://127.0.0.1:{PORT}"
    rng = random.Random(7)
    picks = samples["picks"]
    codec = CursorCodec(SECRET.encode(), 3600)

    def any_tenant() -> str:
        return rng.choice(tenants)

    def deep_cursor() -> tuple[str, str]:
        tenant, ts, id_ = rng.choice(samples["deep"])
        cursor = codec.encode(Position(tenant, {}, "asc", int(ts), id_, int(time.time()), 100))
        return tenant, f"/v1/cdr?scroll_id={cursor}"

    scenarios = [
        ("list, no filter (scroll batch 1)", lambda: (any_tenant(), "/v1/cdr")),
        ("list, one-week time range", lambda: (any_tenant(), "/v1/cdr?start_date=2024-03-01&end_date=2024-03-08")),
        ("list, phone", lambda: (lambda p: (p[0], f"/v1/cdr?phone={p[3]}"))(rng.choice(picks))),
        (
            "page 1 with total, phone",
            lambda: (lambda p: (p[0], f"/v1/cdr?phone={p[3]}&page=1&limit=50"))(rng.choice(picks)),
        ),
        ("list, status + direction", lambda: (any_tenant(), "/v1/cdr?status=BUSY&direction=inbound")),
        ("list, page 1 with total", lambda: (any_tenant(), "/v1/cdr?page=1&limit=10")),
        ("page 1 with total (limit 50)", lambda: (any_tenant(), "/v1/cdr?page=1&limit=50")),
        ("page 200 with total (limit 50)", lambda: (any_tenant(), "/v1/cdr?page=200&limit=50")),
        ("get by id", lambda: (lambda p: (p[0], f"/v1/cdr/{p[1]}"))(rng.choice(picks))),
        ("get by sip_call_id", lambda: (lambda p: (p[0], f"/v1/cdr/{p[2]}"))(rng.choice(picks))),
        ("scroll batch 1 (limit 100)", lambda: (any_tenant(), "/v1/cdr?scroll=true&limit=100")),
        ("scroll batch 1,000 (limit 100)", deep_cursor),
        ("offset page 1 (limit 100)", lambda: (any_tenant(), "/v1/cdr?page=1&limit=100")),
        ("offset page 1,000 (limit 100)", lambda: (any_tenant(), "/v1/cdr?page=1000&limit=100")),
    ]
    scenarios = [(name, make) for name, make in scenarios if args.kinds in name]
    print(f"machine: {machine()}; {args.rows:,} CDRs, {TENANTS} tenants, {args.requests} requests per kind and run")
    one: dict[str, dict[str, Any]] = {}
    eight: dict[str, dict[str, Any]] = {}
    direct: dict[str, dict[str, Any]] = {}
    if not args.only_ingest:
        direct = await direct_reads(scenarios, args.requests, env["CDR_API_TOKENS_FILE"])
        server = start("api", env)
        try:
            await wait_ready(f"http://127.0.0.1:{OPS_PORT}")
            # Every kind with 1 client first, the nearest in time to the direct figures.
            for name, make in scenarios:
                one[name] = await run_scenario(name + " [1 client]", make, args.requests, clients=1)
            for name, make in scenarios:
                eight[name] = await run_scenario(name + " [8 clients]", make, args.requests, clients=8)
        finally:
            stop(server)
    under_ingest = await ingest_phase(env, url, scenarios, args)
    if one:
        print_clients(one, eight, direct)
    if under_ingest:
        print()
        print(under_ingest)
    results = [*one.values(), *eight.values()]
    bad = {r["name"]: r["statuses"] for r in results if set(r["statuses"]) != {200}}
    if bad:
        raise SystemExit(f"non-200 answers: {bad}")


def print_clients(
    one: dict[str, dict[str, Any]], eight: dict[str, dict[str, Any]], direct: dict[str, dict[str, Any]]
) -> None:
    print()
    print(
        "| request | 1 client p50 ms | p99 ms | req/s | direct p50 ms | API / direct p50 | 8 clients p50 ms | p99 ms"
        " | req/s | 8 / 1 clients req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in one:
        ratio = eight[name]["rps"] / one[name]["rps"]
        over = one[name]["p50"] / direct[name]["p50"]
        print(
            f"| {name} | {row(one[name])} | {direct[name]['p50']:.1f} | {over:.2f}x | {row(eight[name])}"
            f" | {ratio:.2f}x |"
        )
    worst = min(eight[name]["rps"] / one[name]["rps"] for name in one)
    print(f"\n8 clients / 1 client req/s, lowest over the kinds: {worst:.2f}x (bar >= 1.6x)")
    # Issue 29's bars: 1 client p50 for a phone search and the pages with their total.
    barred = [name for name in one if "phone" in name or "with total" in name]
    if barred:  # unless --kinds left them out
        slowest = max(barred, key=lambda name: one[name]["p50"])
        print(
            f"1 client p50, slowest phone search or page with total: {slowest} {one[slowest]['p50']:.1f} ms"
            " (bar <= 20 ms)"
        )
    worst99 = max(eight, key=lambda name: eight[name]["p99"])
    print(f"8 clients p99, slowest kind: {worst99} {eight[worst99]['p99']:.1f} ms (bar <= 150 ms)")
    worst_over = max(one, key=lambda name: one[name]["p50"] / direct[name]["p50"])
    print(
        f"API / direct p50, highest: {worst_over} {one[worst_over]['p50'] / direct[worst_over]['p50']:.2f}x"
        " (bar <= 1.5x)"
    )
    for kind, bar in (("scroll batch", "bar <= 1.5x"), ("offset page", "for contrast")):
        shallow, deep = one.get(f"{kind} 1 (limit 100)"), one.get(f"{kind} 1,000 (limit 100)")
        if shallow and deep:
            print(f"{kind} 1,000 / 1 (p50, 1 client): {deep['p50'] / shallow['p50']:.2f}x ({bar})")


async def ingest_phase(env: dict[str, str], url: str, scenarios: list[Any], args: argparse.Namespace) -> str:
    """`cdr run` on the same store: list and get by id idle, then while the simulator
    publishes --ingest-rate events/s (1 client each, so the figures are latencies, not
    queueing). Returns the report, or '' when --ingest-rate is 0."""
    if args.ingest_rate <= 0:
        return ""
    kinds = dict(scenarios)
    measured = tuple(k for k in ("list, no filter (scroll batch 1)", "get by id") if k in kinds)
    if not measured:
        return ""
    with kafka() as bootstrap:
        run_env = {
            **env,
            "CDR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CDR_KAFKA_TOPIC": f"bench-api-{time.time_ns()}",
            "CDR_KAFKA_GROUP_ID": f"bench-api-{time.time_ns()}",
        }
        run_env["CDR_KAFKA_DLQ_TOPIC"] = run_env["CDR_KAFKA_TOPIC"] + ".dlq"
        subprocess.run([sys.executable, "-m", "cdr.cli", "create-topics"], env=run_env, check=True)
        server = start("run", run_env)
        simulator: subprocess.Popen[bytes] | None = None
        try:
            await wait_ready(url)
            idle = {k: await run_scenario(k + " [idle, cdr run]", kinds[k], args.requests, clients=1) for k in measured}
            sim_env = {**run_env, "CDR_LOG_LEVEL": "WARNING"}
            simulator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cdr.cli",
                    "simulate",
                    "--rate",
                    str(args.ingest_rate),
                    "--seed",
                    "3",
                    "--tenants",
                    ",".join(f"tenant{n:03d}.pbx.vn" for n in range(TENANTS)),
                ],
                env=sim_env,
            )
            await asyncio.sleep(8)  # the simulator connects and ingest reaches its steady rate
            began, stored_before = time.perf_counter(), await stored_total(url)
            busy = {k: await run_scenario(k + " [ingesting]", kinds[k], args.requests, clients=1) for k in measured}
            rate = (await stored_total(url) - stored_before) / (time.perf_counter() - began)
        finally:
            if simulator is not None:
                stop(simulator)
            stop(server)
    lines = [
        f"while ingesting (cdr run, simulator at {args.ingest_rate:,.0f} events/s; {rate:,.0f} events/s stored"
        " during the measurement):",
        "| request (1 client) | idle p50 ms | idle p99 ms | ingesting p50 ms | ingesting p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for k in measured:
        ratio = busy[k]["p99"] / idle[k]["p99"]
        lines.append(
            f"| {k} | {idle[k]['p50']:.1f} | {idle[k]['p99']:.1f} | {busy[k]['p50']:.1f} | {busy[k]['p99']:.1f}"
            f" | {ratio:.2f}x (bar <= 2x) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
