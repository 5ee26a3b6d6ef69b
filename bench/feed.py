"""The change feed (issue 27), each figure beside a baseline measured in the same run.

  latency   publish -> delivered on the SSE stream, p50/p99, at each rate into `cdr run`;
            baseline: publish -> visible through the list API (bench/freshness.py's reader),
            both readers following the same probes of one tenant in the same run.
  drain     a client draining a backlog of N changes of one tenant with limit=1000
            (changes/s), the backlog ingested by `cdr run` first.
  contend   list p50/p99 of another tenant's requests: idle; while 5,000 events/s are
            ingested; and while they are with 100 SSE streams of 100 tenants open.
  hub       what open streams cost: an API replica wired as `cdr run` wires it (ingestor,
            feed hub poked after each stored batch) in a child process, which reports its
            CPU time and the hub's ``polls`` (its ClickHouse reads) each second, with
            N streams over M tenants open while 1,000 events/s are ingested.
  lookup    the versions lookup of a feed read (the ids of 100 or 1,000 of one tenant's
            newest calls, from a subquery as the read's own) on bench/api.py's store of many
            tenants (10 M CDRs of 100 by default), against cdr_versions (by tenant, then id)
            and, as the baseline, the shape of the table it replaced (cdr_versions_by_id, by
            id, dropped by migration 0009): a copy the benchmark builds in its store, once.

  python bench/feed.py latency [--rates 1000 20000] [--seconds 20]
  python bench/feed.py drain [--events 200000]
  python bench/feed.py contend [--seconds 20]
  python bench/feed.py hub [--streams 0 100 400] [--seconds 15]
  python bench/feed.py lookup     (after python bench/api.py, which loads its store)

Not a test: one run each, on whatever else shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(__file__))
from api import start, stop, wait_ready
from common import OUT, kafka, machine, percentiles
from freshness import probe_event
from ingest import ZONE, ingest_environment

from cdr.api.auth import token_digest
from cdr.simulate import pbx_event

PORT = 18_134
SECRET = "bench-feed-cursor-secret-0123456789abcdef"
PROBE_TENANT = "probe.bench.vn"
LIST_TENANT = "list.bench.vn"
DRAIN_TENANT = "drain.bench.vn"
# The lookup's baseline: a copy of cdr_versions in the shape of the table migration 0008
# replaced (sorted by id, granules of 256; dropped by 0009), built in the bench store.
OLD_VERSIONS_TABLE = "bench_versions_by_id"
TRAFFIC = [f"tenant{n:03d}.pbx.vn" for n in range(100)]
PROBES_PER_S = 10
WARM_UP_S = 5.0


class Count:
    """Items delivered to the streams of a run."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, _: dict[str, Any]) -> None:
        self.n += 1


def token(tenant: str) -> str:
    return f"bench-feed-token-{tenant}"


def headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant)}"}


def tokens_file(name: str) -> Path:
    path = OUT / f"feed-{name}-tokens.txt"
    tenants = [PROBE_TENANT, LIST_TENANT, DRAIN_TENANT, *TRAFFIC]
    path.write_text("".join(f"{t}:{token_digest(token(t))}\n" for t in tenants))
    return path


async def new_topic(bootstrap: str, name: str) -> str:
    topic = f"bench.feed.{name}.{time.time_ns()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=4, replication_factor=1), NewTopic(topic + ".dlq", 1, 1)]
        )
    finally:
        await admin.close()
    return topic


def service_env(bootstrap: str, topic: str, name: str) -> dict[str, str]:
    data = OUT / f"feed-{name}-store"
    shutil.rmtree(data, ignore_errors=True)
    return {
        **ingest_environment(bootstrap, f"feed-{name}-{time.time_ns()}", data, topic),
        "CDR_API_PORT": str(PORT),
        "CDR_API_TOKENS_FILE": str(tokens_file(name)),
        "CDR_CURSOR_SECRET": SECRET,
        "CDR_TENANT_MAX_CONCURRENT_REQUESTS": "64",
        "CDR_FEED_MAX_STREAMS_PER_TENANT": "1000",
    }


@contextlib.asynccontextmanager
async def cdr_run(bootstrap: str, topic: str, name: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    process = start("run", service_env(bootstrap, topic, name))
    try:
        await wait_ready(f"http://127.0.0.1:{PORT}", process)
        yield process
    finally:
        stop(process)


class Traffic:
    """PBX events made once, each sent with a fresh id (making one costs ~100 µs of Python,
    too slow to make 20,000 a second beside the service); librdkafka's producer, as
    bench/freshness.py explains."""

    def __init__(self, bootstrap: str, topic: str, tenants: list[str], seed: int = 27) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})
        self.templates = [
            orjson.dumps(pbx_event(rng, tenants[n % len(tenants)], datetime.now(UTC), ZONE)) for n in range(2_000)
        ]
        self.id_at = [template.index(b'"id":"') + 6 for template in self.templates]
        self.sent = 0

    def send(self, value: bytes, key: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key)
                return
            except BufferError:  # its queue is full: let it deliver
                self.producer.poll(0.01)

    def one(self) -> None:
        k = self.sent % len(self.templates)
        new_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4)).encode()
        value = self.templates[k][: self.id_at[k]] + new_id + self.templates[k][self.id_at[k] + 36 :]
        self.send(value, new_id)
        self.sent += 1

    async def run(self, rate: float, seconds: float, every_tick: Callable[[float], None] | None = None) -> float:
        """``rate`` events/s for ``seconds`` (``every_tick``: called each ms with the time since
        the start); returns the rate achieved."""
        began = time.monotonic()
        first = self.sent
        while (now := time.monotonic()) - began < seconds:
            due = int((now - began) * rate)
            for _ in range(min(due - (self.sent - first), 2_000)):
                self.one()
            if every_tick is not None:
                every_tick(now - began)
            self.producer.poll(0)
            await asyncio.sleep(0.001)
        await asyncio.to_thread(self.producer.flush, 30)
        return (self.sent - first) / (time.monotonic() - began)

    async def burst(self, n: int) -> None:
        for i in range(n):
            self.one()
            if i % 5_000 == 0:
                self.producer.poll(0)
                await asyncio.sleep(0)
        await asyncio.to_thread(self.producer.flush, 120)


async def follow_stream(
    url: str, tenant: str, seen: Callable[[dict[str, Any]], None], opened: asyncio.Event | None = None
) -> None:
    """An SSE client of ``tenant``'s changes from now; ``seen`` gets each item as it arrives."""
    # No read timeout: a stream waits as long as no change comes (heartbeats aside).
    async with httpx.AsyncClient(base_url=url, headers=headers(tenant), timeout=httpx.Timeout(30, read=None)) as client:
        start_cursor = (await client.get("/v1/cdr/changes")).json()["cursor"]
        async with client.stream(
            "GET", "/v1/cdr/changes/stream", params={"cursor": start_cursor}, headers={"Accept": "text/event-stream"}
        ) as response:
            if response.status_code != 200:
                raise SystemExit(f"stream refused: {response.status_code} {await response.aread()!r}")
            if opened is not None:
                opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen(orjson.loads(line[5:]))


async def stored(url: str, n: int, timeout: float = 600) -> None:
    """Until `cdr run`'s /metrics says ``n`` events are stored."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            text = (await client.get("/metrics")).text
            for line in text.splitlines():
                if line.startswith("cdr_events_stored_total ") and float(line.split()[1]) >= n:
                    return
            await asyncio.sleep(0.5)
    raise SystemExit(f"{n} events not stored within {timeout} s")


# ---- latency --------------------------------------------------------------------------


async def latency(bootstrap: str, rate: int, seconds: float) -> dict[str, Any]:
    topic = await new_topic(bootstrap, f"latency{rate}")
    url = f"http://127.0.0.1:{PORT}"
    published: dict[str, float] = {}
    on_stream: dict[str, float] = {}
    on_list: dict[str, float] = {}
    async with cdr_run(bootstrap, topic, f"latency{rate}"):
        traffic = Traffic(bootstrap, topic, TRAFFIC)
        opened = asyncio.Event()
        streaming = asyncio.create_task(
            follow_stream(url, PROBE_TENANT, lambda item: on_stream.setdefault(item["id"], time.monotonic()), opened)
        )
        await asyncio.wait_for(opened.wait(), 30)
        done = asyncio.Event()

        async def poll_list() -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers(PROBE_TENANT), timeout=10) as client:
                while not done.is_set():
                    answer = await client.get("/v1/cdr", params={"scroll": "true", "limit": 50, "order": "desc"})
                    now = time.monotonic()
                    if answer.status_code == 200:
                        for row in answer.json()["data"]:
                            on_list.setdefault(row["id"], now)
                    await asyncio.sleep(0.05)

        polling = asyncio.create_task(poll_list())
        next_probe = [WARM_UP_S]

        def probe(elapsed: float) -> None:
            if elapsed >= next_probe[0]:
                next_probe[0] += 1 / PROBES_PER_S
                event = probe_event(traffic.rng)
                published[event["id"]] = time.monotonic()
                traffic.send(orjson.dumps(event), event["id"].encode())

        achieved = await traffic.run(rate, seconds, probe)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(on_stream) < len(published) or len(on_list) < len(published)):
            await asyncio.sleep(0.2)
        done.set()
        await polling
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await streaming

    def summary(seen: dict[str, float]) -> dict[str, float]:
        delays = [(seen[i] - t) * 1000 for i, t in published.items() if i in seen]
        return {**percentiles(delays), "max": max(delays), "n": len(delays), "missing": len(published) - len(delays)}

    return {"rate": rate, "achieved": achieved, "stream": summary(on_stream), "list": summary(on_list)}


# ---- drain ----------------------------------------------------------------------------


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


async def page_costs(data: Path, since: datetime, pages: int = 30) -> dict[str, float]:
    """What one page of the drain costs, part by part (p50 ms over ``pages`` pages spread
    through the backlog), on the store the drain read, after `cdr run` stopped (the
    embedded store is one process's at a time): the read of the page alone, the read with
    its versions lookup beside it (``read_settled``, as the API reads), and rendering its
    items (rows to items, JSON)."""
    from cdr.settings import load_settings
    from cdr.store import open_store
    from cdr.store.feed import CHANGES_TABLE, VERSIONS_TABLE, start_position, tenant_read, tenant_start
    from cdr.store.feed_hub import read_settled

    store = open_store(load_settings(data_dir=data).clickhouse)
    table, versions = store.qualified(CHANGES_TABLE), store.qualified(VERSIONS_TABLE)
    try:
        start = tenant_start(table, DRAIN_TENANT, since)
        first = start_position(await store.query(start.sql, start.params))
        last = await store.query(
            f"SELECT source_partition, max(source_offset) FROM {table} WHERE tenant_id = {{t:String}}"
            " GROUP BY source_partition",
            {"t": DRAIN_TENANT},
        )
        span = {int(p): int(o) - first.get(int(p), -1) for p, o in last}
        costs: dict[str, list[float]] = {"read": [], "settled": [], "render": [], "total": []}
        for n in range(pages):
            position = {p: first.get(p, -1) + span[p] * n // pages for p in span}
            read = tenant_read(
                table,
                versions,
                DRAIN_TENANT,
                position,
                limit=1000,
                now_ms=time.time_ns() // 10**6,
                horizon_s=None,
                zone=ZONE.key,
            )
            began = time.perf_counter()
            await store.query(read.rows.sql, read.rows.params)
            costs["read"].append(_ms(began))
            began = time.perf_counter()
            changes = await read_settled(store, read, ZONE.key)
            costs["settled"].append(_ms(began))
            began_render = time.perf_counter()
            orjson.dumps({"data": [c.render(ZONE) for c in changes if c.change], "cursor": ""})
            costs["render"].append(_ms(began_render))
            costs["total"].append(_ms(began))
        return {name: percentiles(values)["p50"] for name, values in costs.items()}
    finally:
        await store.close()


async def lookup(rounds: int = 8) -> dict[tuple[int, str], float]:
    """p50 ms of the versions lookup per (ids, table name) over ``rounds`` rounds of a few
    tenants, in the SQL the feed's reads use (``versions_lookup``)."""
    from cdr.settings import load_settings
    from cdr.store import open_store
    from cdr.store.feed import VERSIONS_TABLE, versions_lookup
    from cdr.store.migrations import migrate

    data = OUT / "api-store"
    if not data.exists():
        raise SystemExit("no store: run python bench/api.py first (it loads 10 M CDRs of 100 tenants)")
    store = open_store(load_settings(data_dir=data, clickhouse_url=None).clickhouse)
    try:
        await migrate(store)
        await store.command(
            f"CREATE TABLE IF NOT EXISTS {store.qualified(OLD_VERSIONS_TABLE)} ENGINE = AggregatingMergeTree"
            " ORDER BY (id, tenant_id) SETTINGS index_granularity = 256"
            f" AS SELECT id, tenant_id, first, newest FROM {store.qualified(VERSIONS_TABLE)}"
        )
        cdr = store.qualified("cdr")
        tenants = [t for (t,) in await store.query(f"SELECT DISTINCT tenant_id FROM {cdr} LIMIT 5")]
        tables = (VERSIONS_TABLE, OLD_VERSIONS_TABLE)
        times: dict[tuple[int, str], list[float]] = {}
        for _ in range(rounds):
            for tenant in tenants:
                for n in (100, 1_000):
                    # The newest calls of the tenant, as a feed page holds: ids from a subquery.
                    ids = (
                        f"SELECT id FROM {cdr} WHERE tenant_id = {{tenant:String}}"
                        " ORDER BY time_started DESC LIMIT {n:UInt32}"
                    )
                    for table in tables:
                        calls = f"tenant_id = {{tenant:String}} AND id IN ({ids})"
                        sql = versions_lookup(store.qualified(table), calls)
                        began = time.perf_counter()
                        found = await store.query(sql, {"tenant": tenant, "n": n})
                        times.setdefault((n, table), []).append(_ms(began))
                        assert len(found) == n, (table, len(found))
        return {key: percentiles(values)["p50"] for key, values in times.items()}
    finally:
        await store.close()


async def drain(bootstrap: str, events: int) -> dict[str, float]:
    topic = await new_topic(bootstrap, "drain")
    url = f"http://127.0.0.1:{PORT}"
    async with cdr_run(bootstrap, topic, "drain"):
        since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
        began = time.monotonic()
        await Traffic(bootstrap, topic, [DRAIN_TENANT]).burst(events)
        await stored(url, events)
        ingest_s = time.monotonic() - began
        ids: set[str] = set()
        received = pages = 0
        async with httpx.AsyncClient(base_url=url, headers=headers(DRAIN_TENANT), timeout=60) as client:
            began = time.monotonic()
            params = {"since": since, "limit": "1000"}
            while True:
                answer = orjson.loads((await client.get("/v1/cdr/changes", params=params)).content)
                pages += 1
                received += len(answer["data"])
                ids.update(item["id"] for item in answer["data"])
                params = {"cursor": answer["cursor"], "limit": "1000"}
                if not answer["data"] and len(ids) >= events:
                    break
            drained_s = time.monotonic() - began
    per_page = await page_costs(OUT / "feed-drain-store", datetime.fromisoformat(since))
    return {
        **{f"page_{name}_ms": value for name, value in per_page.items()},
        "events": events,
        "ingest_s": ingest_s,
        "drain_s": drained_s,
        "per_s": received / drained_s,
        "pages": pages,
        "distinct": len(ids),
        "received": received,
    }


# ---- contend --------------------------------------------------------------------------


async def list_latencies(url: str, seconds: float) -> dict[str, float]:
    """Sequential list requests of LIST_TENANT for ``seconds``."""
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers(LIST_TENANT), timeout=30) as client:
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            t0 = time.perf_counter()
            answer = await client.get("/v1/cdr", params={"scroll": "true", "limit": 50, "order": "desc"})
            samples.append((time.perf_counter() - t0) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"list answered {answer.status_code}: {answer.text[:200]}")
            await asyncio.sleep(0.02)
    return {**percentiles(samples), "n": len(samples)}


async def list_latencies_apart(seconds: float) -> dict[str, float]:
    """``list_latencies`` in a process of its own, as another customer's client would be: in
    this one, its event loop would also serve the 100 streams' SSE parsing and the PBX
    traffic, and a list answer would wait for them (the client's delay, not the service's)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "list-child", str(PORT), "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode:
        raise SystemExit(f"the list client failed ({child.returncode})")
    result: dict[str, float] = orjson.loads(out.splitlines()[-1])
    return result


async def contend(bootstrap: str, seconds: float, rate: int = 5_000, streams: int = 100) -> dict[str, Any]:
    topic = await new_topic(bootstrap, "contend")
    url = f"http://127.0.0.1:{PORT}"
    results: dict[str, Any] = {}
    async with cdr_run(bootstrap, topic, "contend") as process:
        cpu = psutil.Process(process.pid)
        traffic = Traffic(bootstrap, topic, [*TRAFFIC, LIST_TENANT])
        await traffic.burst(50_000)  # something to list: ~500 calls of the list tenant
        await stored(url, 50_000)

        def cpu_s() -> float:
            t = cpu.cpu_times()
            return float(t.user + t.system)

        def machine_s() -> float:  # every process's: the bench's clients and the broker share the cores
            t = psutil.cpu_times()
            return float(t.user + t.system + t.nice + t.softirq + t.irq)

        c0, m0 = cpu_s(), machine_s()
        results["idle"] = await list_latencies_apart(seconds)
        results["idle"]["cpu"] = (cpu_s() - c0) / seconds
        results["idle"]["machine"] = (machine_s() - m0) / seconds
        for phase, open_streams in (("ingest", 0), ("ingest+streams", streams)):
            delivered = Count()
            tasks = []
            for n in range(open_streams):
                opened = asyncio.Event()
                tasks.append(asyncio.create_task(follow_stream(url, TRAFFIC[n % len(TRAFFIC)], delivered.add, opened)))
                await asyncio.wait_for(opened.wait(), 30)
            sending = asyncio.create_task(traffic.run(rate, seconds + 4))
            await asyncio.sleep(2)  # the rate reached: a warm-up, not a synchronisation
            c0, m0, d0 = cpu_s(), machine_s(), delivered.n
            results[phase] = await list_latencies_apart(seconds)
            results[phase]["cpu"] = (cpu_s() - c0) / seconds
            results[phase]["machine"] = (machine_s() - m0) / seconds
            results[phase]["delivered_per_s"] = (delivered.n - d0) / seconds
            results[phase]["rate"] = await sending
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results


# ---- hub ------------------------------------------------------------------------------


_SAMPLE = "hub-sample "


async def hub_child(port: int) -> None:
    """An API replica wired as `cdr run` wires it, reporting its CPU and the hub's polls
    each second on stdout (JSON lines)."""
    from cdr.api.app import create_app
    from cdr.ingest.app import build_ingestor
    from cdr.metrics import Metrics
    from cdr.serve import http_server
    from cdr.settings import load_settings
    from cdr.store import open_store
    from cdr.store.feed_hub import feed_hub_for
    from cdr.store.migrations import migrate

    settings = load_settings()
    store = open_store(settings.clickhouse)
    await migrate(store, feed_retention_days=settings.api.feed_retention_days)
    metrics = Metrics()
    ingestor = build_ingestor(settings.kafka, settings.ingest, settings.common, store, metrics)
    hub = feed_hub_for(settings.api, store, metrics)
    ingestor.pipeline.on_stored = hub.poke  # as cdr.runner does
    app = create_app(settings.api, settings.common, store, metrics, feed_hub=hub)
    server = http_server(app, "127.0.0.1", port, settings.api)
    await ingestor.start()
    serving = asyncio.create_task(server.serve())
    me = psutil.Process()
    while not serving.done():
        t = me.cpu_times()
        sample = {
            "t": time.monotonic(),
            "cpu": t.user + t.system,
            "polls": metrics.registry.get_sample_value("cdr_feed_hub_polls_total"),
        }
        print(_SAMPLE + orjson.dumps(sample).decode(), flush=True)
        await asyncio.sleep(1)


async def hub(bootstrap: str, configs: list[int], seconds: float, rate: int = 1_000) -> list[dict[str, float]]:
    results = []
    url = f"http://127.0.0.1:{PORT}"
    for streams in configs:
        tenants = max(1, streams // 10)  # ten streams per tenant, as 10,000 over 1,000
        topic = await new_topic(bootstrap, f"hub{streams}")
        env = service_env(bootstrap, topic, f"hub{streams}")
        child = subprocess.Popen(
            [sys.executable, __file__, "hub-child", str(PORT)], env=env, stdout=subprocess.PIPE, text=True
        )
        samples: list[dict[str, float]] = []

        async def read_samples(child: subprocess.Popen[str] = child, samples: list[dict[str, float]] = samples) -> None:
            assert child.stdout is not None
            while line := await asyncio.to_thread(child.stdout.readline):
                if line.startswith(_SAMPLE):  # (FastStream logs to stdout too)
                    samples.append(orjson.loads(line.removeprefix(_SAMPLE)))

        reading = asyncio.create_task(read_samples())
        try:
            await wait_ready(url, None)
            traffic = Traffic(bootstrap, topic, TRAFFIC[:tenants] if streams else TRAFFIC[:10])
            delivered = Count()
            tasks = []
            for n in range(streams):
                opened = asyncio.Event()
                tasks.append(asyncio.create_task(follow_stream(url, TRAFFIC[n % tenants], delivered.add, opened)))
                await asyncio.wait_for(opened.wait(), 30)
            sending = asyncio.create_task(traffic.run(rate, seconds + 4))
            await asyncio.sleep(3)  # the rate reached: a warm-up, not a synchronisation
            first, d0 = samples[-1], delivered.n
            await asyncio.sleep(seconds)
            last, d1 = samples[-1], delivered.n
            achieved = await sending
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            child.terminate()
            child.wait(timeout=60)
            await reading
        span = last["t"] - first["t"]
        results.append(
            {
                "streams": streams,
                "tenants": tenants if streams else 0,
                "rate": achieved,
                "cpu": (last["cpu"] - first["cpu"]) / span,
                "polls_per_s": (last["polls"] - first["polls"]) / span,
                "delivered_per_s": (d1 - d0) / (seconds),
            }
        )
        print(results[-1], flush=True)
    return results


# ---- main -----------------------------------------------------------------------------


def _row(r: dict[str, float]) -> str:
    return f"{r['p50']:.0f} ms | {r['p99']:.0f} ms | {r['max']:.0f} ms | {r['n']:.0f} ({r['missing']:.0f})"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["latency", "drain", "contend", "hub", "lookup", "hub-child", "list-child"])
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("--rates", type=int, nargs="+", default=[1_000, 20_000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--streams", type=int, nargs="+", default=[0, 100, 400])
    args = parser.parse_args()
    if args.what == "hub-child":
        await hub_child(args.port)
        return
    if args.what == "list-child":
        print(orjson.dumps(await list_latencies(f"http://127.0.0.1:{args.port}", args.seconds)).decode())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    if args.what == "lookup":
        print("| ids | cdr_versions (tenant_id, id) p50 | sorted by id (the table 0008 replaced) p50, the baseline |")
        print("|---|---|---|")
        from cdr.store.feed import VERSIONS_TABLE

        r = await lookup()
        for n in (100, 1_000):
            print(f"| {n:,} | {r[n, VERSIONS_TABLE]:.1f} ms | {r[n, OLD_VERSIONS_TABLE]:.1f} ms |")
        return
    with kafka() as bootstrap:
        if args.what == "latency":
            print("| rate (achieved) | reader | p50 | p99 | max | probes (missing) |")
            print("|---|---|---|---|---|---|")
            for rate in args.rates:
                r = await latency(bootstrap, rate, args.seconds)
                print(f"| {rate:,}/s ({r['achieved']:,.0f}/s) | SSE stream | {_row(r['stream'])} |")
                print(f"| | list API (baseline) | {_row(r['list'])} |", flush=True)
        elif args.what == "drain":
            r = await drain(bootstrap, args.events)
            print(
                f"backlog {r['events']:,} changes (ingested in {r['ingest_s']:.1f} s): drained in {r['drain_s']:.1f} s"
                f" = {r['per_s']:,.0f} changes/s, {r['pages']:.0f} pages, {r['distinct']:,.0f} distinct of"
                f" {r['received']:,.0f} received"
            )
            print(
                f"one page (p50 of 30 through the backlog, on the store): read alone {r['page_read_ms']:.1f} ms,"
                f" read + versions lookup beside it {r['page_settled_ms']:.1f} ms, render {r['page_render_ms']:.1f} ms,"
                f" all {r['page_total_ms']:.1f} ms"
            )
        elif args.what == "contend":
            r = await contend(bootstrap, args.seconds)
            print(
                "| phase | list p50 | list p99 | p99 / idle | requests | cdr run CPU (cores)"
                f" | machine CPU (of {psutil.cpu_count()} cores) | delivered/s |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for phase, x in r.items():
                print(
                    f"| {phase} | {x['p50']:.1f} ms | {x['p99']:.1f} ms | {x['p99'] / r['idle']['p99']:.2f} |"
                    f" {x['n']:.0f} | {x['cpu']:.2f} | {x['machine']:.2f} | {x.get('delivered_per_s', 0):,.0f} |"
                )
        else:
            rows = await hub(bootstrap, args.streams, args.seconds)
            print("| streams / tenants | events/s | replica CPU (cores) | hub polls/s | delivered/s |")
            print("|---|---|---|---|---|")
            for x in rows:
                print(
                    f"| {x['streams']:.0f} / {x['tenants']:.0f} | {x['rate']:,.0f} | {x['cpu']:.2f} |"
                    f" {x['polls_per_s']:.1f} | {x['delivered_per_s']:,.0f} |"
                )


if __name__ == "__main__":
    asyncio.run(main())
