"""Freshness: how long after the PBX publishes a call it can be read through the API.

Runs `cdr run` (ingest + API in one process, embedded store, default settings) against a
topic fed by PBX traffic at each rate. A probe call of its own tenant is published
every 1/PROBES_PER_S seconds among the traffic; a reader polls that tenant's newest
calls through the API every POLL_S and notes when each probe first appears. Freshness
is that moment minus the probe's publish (just before the producer's send).

  python bench/freshness.py [--rates 1000 20000] [--seconds 30]
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
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(__file__))
from api import start, stop, wait_ready
from common import OUT, kafka, machine, percentiles
from ingest import ZONE, ingest_environment

from cdr.api.auth import token_digest
from cdr.simulate import make_event, pbx_event

PORT = 18_133
PROBE_TENANT = "probe.bench.vn"
PROBE_TOKEN = "bench-freshness-probe-token"
PROBES_PER_S = 10
POLL_S = 0.05
WARM_UP_S = 5.0


def probe_event(rng: random.Random) -> dict[str, Any]:
    """A short unanswered call that ended now: the reader's newest-first list finds the
    probes in publish order."""
    ended = datetime.now(UTC)
    probe = make_event(rng, PROBE_TENANT, ended)
    return {
        **probe,
        "id": str(uuid.uuid4()),
        "time_started": (ended - timedelta(seconds=3)).isoformat(),
        "time_answered": None,
        "duration": 3,
        "billsec": 0,
        "status": "NO ANSWER",
        "recording_url": None,
    }


def _produce(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:  # its queue is full: let it deliver
            producer.poll(0.01)


async def start_cdr(bootstrap: str, topic: str) -> subprocess.Popen[bytes]:
    data = OUT / "freshness-store"
    shutil.rmtree(data, ignore_errors=True)
    tokens = OUT / "freshness-tokens.txt"
    tokens.write_text(f"{PROBE_TENANT}:{token_digest(PROBE_TOKEN)}\n")
    env = {
        **ingest_environment(bootstrap, f"freshness-{time.time_ns()}", data, topic),
        "CDR_KAFKA_AUTO_OFFSET_RESET": "latest",
        "CDR_API_PORT": str(PORT),
        "CDR_API_TOKENS_FILE": str(tokens),
        "CDR_CURSOR_SECRET": "bench-freshness-cursor-secret-0123456789",
    }
    process = start("run", env)
    try:
        await wait_ready(f"http://127.0.0.1:{PORT}", process)
    except SystemExit:
        stop(process)
        raise
    return process


async def one_rate(bootstrap: str, topic: str, rate: int, seconds: float) -> dict[str, float]:
    # librdkafka's producer (confluent-kafka, which the arroyo peer brings): aiokafka's
    # could not publish 20,000 a second beside the service on two cores.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})
    published: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()

    async def publish() -> int:
        # The traffic: PBX events made once (making one costs ~100 µs of Python, too slow to
        # make 20,000 a second beside the service), each sent with a fresh id.
        rng = random.Random(rate)
        templates = [
            orjson.dumps(pbx_event(rng, f"tenant{n % 100:03d}.pbx.vn", datetime.now(UTC), ZONE)) for n in range(2_000)
        ]
        id_at = [template.index(b'"id":"') + 6 for template in templates]
        began = time.monotonic()
        sent = 0
        next_probe = began + WARM_UP_S
        while time.monotonic() - began < seconds:
            now = time.monotonic()
            due = int((now - began) * rate)
            for _ in range(min(due - sent, 2_000)):
                k = sent % len(templates)
                new_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
                value = templates[k][: id_at[k]] + new_id + templates[k][id_at[k] + 36 :]
                _produce(producer, topic, value, new_id)
                sent += 1
            if now >= next_probe:
                next_probe += 1 / PROBES_PER_S
                probe = probe_event(rng)
                published[probe["id"]] = time.monotonic()
                _produce(producer, topic, orjson.dumps(probe), probe["id"].encode())
            producer.poll(0)
            await asyncio.sleep(0.001)
        await asyncio.to_thread(producer.flush, 30)
        return sent

    async def poll() -> None:
        headers = {"Authorization": f"Bearer {PROBE_TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", headers=headers, timeout=10) as client:
            while not stop.is_set() or len(seen) < len(published):
                response = await client.get("/v1/cdr", params={"scroll": "true", "limit": 50, "order": "desc"})
                now = time.monotonic()
                if response.status_code == 200:
                    for row in response.json()["data"]:
                        seen.setdefault(row["id"], now)
                await asyncio.sleep(POLL_S)
                if stop.is_set() and time.monotonic() > stopped_at + 30:
                    break

    stopped_at = 0.0
    poller = asyncio.create_task(poll())
    began = time.monotonic()
    sent = await publish()
    achieved = sent / (time.monotonic() - began)
    stopped_at = time.monotonic()
    stop.set()
    await poller
    delays = [(seen[i] - t) * 1000 for i, t in published.items() if i in seen]
    missing = len(published) - len(delays)
    stats = percentiles(delays)
    return {"rate": achieved, "probes": len(delays), "missing": missing, **stats, "max": max(delays)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=int, nargs="+", default=[1_000, 20_000])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    with kafka() as bootstrap:
        for rate in args.rates:
            topic = f"bench.freshness.{rate}.{time.time_ns()}"
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            await admin.create_topics(
                [NewTopic(topic, num_partitions=4, replication_factor=1), NewTopic(topic + ".dlq", 1, 1)]
            )
            await admin.close()
            process = await start_cdr(bootstrap, topic)
            try:
                result = await one_rate(bootstrap, topic, rate, args.seconds)
            finally:
                stop(process)
            print(
                f"target {rate:,} events/s (published {result['rate']:,.0f}/s): freshness p50 {result['p50']:.0f} ms,"
                f" p99 {result['p99']:.0f} ms, max {result['max']:.0f} ms over {result['probes']:.0f} probes"
                f" ({result['missing']:.0f} never seen)"
            )
            results.append((rate, result))
    print()
    print(f"machine: {machine()}")
    print("| target rate | published | freshness p50 | p95 | p99 | max | probes (never seen) |")
    print("|---|---|---|---|---|---|---|")
    for rate, r in results:
        print(
            f"| {rate:,}/s | {r['rate']:,.0f}/s | {r['p50']:.0f} ms | {r['p95']:.0f} ms | {r['p99']:.0f} ms"
            f" | {r['max']:.0f} ms | {r['probes']:.0f} ({r['missing']:.0f}) |"
        )


if __name__ == "__main__":
    asyncio.run(main())
