"""Webhooks (issue 28 bars): how soon a published call reaches a healthy endpoint, and how
many changes one `cdr notify` delivers per second.

1. Latency: `cdr run` (ingest + API + notifier, embedded store, default webhook settings)
   with one endpoint for each of --tenants tenants on a loopback receiver in this process;
   events of those tenants published at --rate for --seconds. Delay = the receiver reading
   the change minus the publish (just before the producer's send), for every change.
2. Throughput: --endpoints endpoints (20 per tenant) that cannot be reached while `cdr run`
   stores --events events (their positions stay where the feed began), then `cdr notify`
   alone on that store with the receiver up: every endpoint catches up with its tenant's
   changes. Changes/s = changes received (all endpoints) / first to last receipt.

    python bench/webhooks.py [--rate 1000] [--seconds 30] [--events 20000] [--endpoints 100]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(__file__))
from api import start, stop, wait_ready
from common import OUT, kafka, machine, percentiles
from freshness import _produce
from ingest import ZONE, ingest_environment

from cdr.api.auth import token_digest
from cdr.simulate import pbx_event

PORT = 18_143
OPS_PORT = 18_144
SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789!").decode()
PER_TENANT = 20  # the directory's limit of endpoints per tenant


class Counting:
    """A loopback HTTP/1.1 receiver that answers 200 at once and notes when each change
    (id) first arrives, and how many items arrived in all."""

    def __init__(self, on_item: Callable[[str, float], None]) -> None:
        self._on_item = on_item
        self.items = 0
        self.first = 0.0
        self.last = 0.0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._open:
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.monotonic()
                items = orjson.loads(body)["data"]
                self.first = self.first or now
                self.last = now
                self.items += len(items)
                for item in items:
                    self._on_item(item["id"], now)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the sender closed, or the bench is over
        finally:
            self._open.discard(writer)
            writer.close()


def tenants_file(path: Path, tenants: list[str], per_tenant: int) -> dict[str, str]:
    """The directory: each tenant with a token and ``per_tenant`` endpoints on the receiver."""
    tokens = {t: f"bench-webhook-token-{i:04d}-{'x' * 16}" for i, t in enumerate(tenants)}
    entries = {
        t: {
            "tokens": [token_digest(tokens[t])],
            "timezone": str(ZONE),
            "webhooks": [
                {"name": f"e{n}", "url": f"http://127.0.0.1:{PORT + 10}/{t}/{n}", "secrets": [SECRET]}
                for n in range(per_tenant)
            ],
        }
        for t in tenants
    }
    path.write_bytes(orjson.dumps({"tenants": entries}))
    return tokens


def environment(bootstrap: str, topic: str, data: Path, directory: Path) -> dict[str, str]:
    return {
        **ingest_environment(bootstrap, f"webhooks-{time.time_ns()}", data, topic),
        "CDR_API_PORT": str(PORT),
        "CDR_TENANTS_FILE": str(directory),
        "CDR_CURSOR_SECRET": "bench-webhooks-cursor-secret-0123456789",
        "CDR_WEBHOOK_ALLOW_PRIVATE": "true",
    }


async def all_recorded(tokens: dict[str, str], per_tenant: int) -> None:
    """Until the notifier has recorded every endpoint's starting position."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=10) as client:
        for _ in range(1200):
            states = []
            for token in tokens.values():
                answer = await client.get("/v1/webhooks", headers={"Authorization": f"Bearer {token}"})
                states += answer.json()["data"]
            if len(states) == len(tokens) * per_tenant and all(s["state"] != "pending" for s in states):
                return
            await asyncio.sleep(0.1)
    raise SystemExit("the notifier did not record the endpoints")


async def new_topic(bootstrap: str, name: str) -> str:
    topic = f"bench.webhooks.{name}.{time.time_ns()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1), NewTopic(topic + ".dlq", 1, 1)])
    await admin.close()
    return topic


async def publish(
    bootstrap: str, topic: str, tenants: list[str], rate: float, count: int, sent_at: dict[str, float]
) -> float:
    """``count`` events at ``rate``/s (templates with fresh ids); returns the rate achieved."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})
    rng = random.Random(28)
    templates = [orjson.dumps(pbx_event(rng, tenants[n % len(tenants)], datetime.now(UTC), ZONE)) for n in range(500)]
    id_at = [template.index(b'"id":"') + 6 for template in templates]
    began = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - began) * rate) + 1)
        while sent < due:
            k = sent % len(templates)
            new_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            value = templates[k][: id_at[k]] + new_id.encode() + templates[k][id_at[k] + 36 :]
            sent_at[new_id] = time.monotonic()
            _produce(producer, topic, value, new_id.encode())
            sent += 1
        producer.poll(0)
        await asyncio.sleep(0.001)
    achieved = sent / (time.monotonic() - began)
    await asyncio.to_thread(producer.flush, 30)
    return achieved


async def latency(bootstrap: str, rate: float, seconds: float, n_tenants: int) -> None:
    tenants = [f"hook{n:02d}.bench.vn" for n in range(n_tenants)]
    data, directory = OUT / "webhooks-latency-store", OUT / "webhooks-latency-tenants.json"
    shutil.rmtree(data, ignore_errors=True)
    tokens = tenants_file(directory, tenants, 1)
    received: dict[str, float] = {}
    receiver = Counting(lambda id_, at: received.setdefault(id_, at))
    await receiver.start(PORT + 10)
    topic = await new_topic(bootstrap, "latency")
    process = start("run", environment(bootstrap, topic, data, directory))
    sent_at: dict[str, float] = {}
    try:
        await wait_ready(f"http://127.0.0.1:{PORT}", process)
        await all_recorded(tokens, 1)
        achieved = await publish(bootstrap, topic, tenants, rate, int(rate * seconds), sent_at)
        deadline = time.monotonic() + 60
        while len(received) < len(sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        stop(process)
        await receiver.close()
    delays = [(received[i] - t) * 1000 for i, t in sent_at.items() if i in received]
    stats = percentiles(delays)
    print(
        f"latency: published {achieved:,.0f} events/s for {seconds:g} s to {n_tenants} endpoints; publish -> received"
        f" p50 {stats['p50']:.0f} ms, p95 {stats['p95']:.0f} ms, p99 {stats['p99']:.0f} ms, max {max(delays):.0f} ms;"
        f" {len(sent_at) - len(delays)} of {len(sent_at)} never received"
    )


async def throughput(bootstrap: str, events: int, endpoints: int) -> None:
    n_tenants = max(1, endpoints // PER_TENANT)
    tenants = [f"fan{n:02d}.bench.vn" for n in range(n_tenants)]
    data, directory = OUT / "webhooks-fanout-store", OUT / "webhooks-fanout-tenants.json"
    shutil.rmtree(data, ignore_errors=True)
    tokens = tenants_file(directory, tenants, PER_TENANT)
    topic = await new_topic(bootstrap, "fanout")
    env = environment(bootstrap, topic, data, directory)
    # Phase A: no receiver yet (connections refused): the changes are stored, none delivered.
    process = start("run", env)
    try:
        await wait_ready(f"http://127.0.0.1:{PORT}", process)
        await all_recorded(tokens, PER_TENANT)
        await publish(bootstrap, topic, tenants, 20_000, events, {})
        async with httpx.AsyncClient() as client:
            for _ in range(3000):
                text = (await client.get(f"http://127.0.0.1:{PORT}/metrics")).text
                if f"cdr_events_stored_total {float(events)}" in text:
                    break
                await asyncio.sleep(0.1)
    finally:
        stop(process)
    # Phase B: `cdr notify` alone, the receiver up.
    receiver = Counting(lambda id_, at: None)
    await receiver.start(PORT + 10)
    notify = start("notify", {**env, "CDR_OPS_PORT": str(OPS_PORT), "CDR_LOG_LEVEL": "WARNING"})
    wanted = events * PER_TENANT
    try:
        began = time.monotonic()
        while receiver.items < wanted and time.monotonic() - began < 600:
            if notify.poll() is not None:
                raise SystemExit(f"cdr notify exited with {notify.returncode}")
            await asyncio.sleep(0.2)
    finally:
        stop(notify)
        await receiver.close()
    elapsed = receiver.last - receiver.first
    print(
        f"throughput: one cdr notify, {n_tenants * PER_TENANT} endpoints ({n_tenants} tenants x {PER_TENANT}),"
        f" {events:,} changes stored: {receiver.items:,} of {wanted:,} items received in {elapsed:.1f} s"
        f" (first to last) = {receiver.items / max(elapsed, 1e-9):,.0f} changes/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--tenants", type=int, default=10, help="latency: endpoints (one per tenant)")
    parser.add_argument("--events", type=int, default=20_000, help="throughput: changes stored")
    parser.add_argument("--endpoints", type=int, default=100, help="throughput: endpoints (20 per tenant)")
    parser.add_argument("--only", choices=["latency", "throughput"], default=None)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    with kafka() as bootstrap:
        if args.only in (None, "latency"):
            await latency(bootstrap, args.rate, args.seconds, args.tenants)
        if args.only in (None, "throughput"):
            await throughput(bootstrap, args.events, args.endpoints)


if __name__ == "__main__":
    asyncio.run(main())
