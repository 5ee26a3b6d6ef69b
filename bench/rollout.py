"""What one ingestor replacement costs the group: dynamic vs static membership.

Two consumers of one group share a 6-partition topic fed at a steady rate. One of them (B)
is replaced as a rolling update replaces a pod: it stops, is away ``--away-s``, and a new
one starts (with the same ``group.instance.id`` under static membership). Measured: how many
rebalances the consumer that stays (A) goes through, A's longest stretch without a record
(the pause the replacement inflicts on partitions it never touched), and the oldest record
any consumer received (the wait of B's own partitions: its time away, at least).

aiokafka's group protocol is the one the ingestor runs (FastStream subscribes through
it); the ingestor's own revoke wait (a batch in flight is finished first, up to
CDR_SHUTDOWN_TIMEOUT_MS) comes on top of each eager rebalance and is not in these figures.

    .venv/bin/python bench/rollout.py --away-s 2     # CDR_KAFKA_BOOTSTRAP_SERVERS or own broker
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from common import kafka, machine

PARTITIONS = 6


@dataclass
class Seen:
    """What the consumers received: (receive time, produce time) per record, per consumer."""

    records: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    revokes: dict[str, int] = field(default_factory=dict)


class _Count(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, seen: Seen, name: str) -> None:
        self._seen, self._name = seen, name

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._seen.revokes[self._name] = self._seen.revokes.get(self._name, 0) + 1

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


async def _consume(consumer: AIOKafkaConsumer, seen: Seen, name: str, stop: asyncio.Event) -> None:
    mine = seen.records.setdefault(name, [])
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100)
        now = time.time()
        for records in batches.values():
            mine.extend((now, struct.unpack(">d", r.value)[0]) for r in records)
        if batches:
            await consumer.commit()


def _consumer(bootstrap: str, topic: str, group: str, instance: str | None, seen: Seen, name: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        group_instance_id=instance,
        session_timeout_ms=10_000,  # CDR_KAFKA_SESSION_TIMEOUT_MS's default
        heartbeat_interval_ms=3_000,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.subscribe([topic], listener=_Count(seen, name))
    return consumer


async def _produce(bootstrap: str, topic: str, rate: float, stop: asyncio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        n = 0
        while not stop.is_set():
            await producer.send(topic, struct.pack(">d", time.time()), partition=n % PARTITIONS)
            n += 1
            await asyncio.sleep(1 / rate)
    finally:
        await producer.stop()


def _longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


async def one_run(bootstrap: str, static: bool, away_s: float, rate: float) -> dict[str, float]:
    topic, group = f"rollout-{uuid.uuid4().hex[:8]}", f"rollout-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    await admin.close()
    seen, stop = Seen(), asyncio.Event()
    producing = asyncio.create_task(_produce(bootstrap, topic, rate, stop))
    a = _consumer(bootstrap, topic, group, "ingest-0" if static else None, seen, "a")
    b = _consumer(bootstrap, topic, group, "ingest-1" if static else None, seen, "b")
    await a.start()
    await b.start()
    b_stop = asyncio.Event()
    running = [asyncio.create_task(_consume(a, seen, "a", stop)), asyncio.create_task(_consume(b, seen, "b", b_stop))]
    deadline = time.monotonic() + 60
    while len(a.assignment()) + len(b.assignment()) < PARTITIONS or not seen.records.get("b"):
        if time.monotonic() > deadline:
            raise RuntimeError("the two consumers never shared the partitions")
        await asyncio.sleep(0.1)
    await asyncio.sleep(3)  # steady state before the replacement
    revokes_before = seen.revokes.get("a", 0)
    replaced_at = time.time()
    b_stop.set()
    await running[1]
    await b.stop()
    await asyncio.sleep(away_s)  # the pod is away: terminated, scheduled, started
    b2 = _consumer(bootstrap, topic, group, "ingest-1" if static else None, seen, "b2")
    await b2.start()
    running.append(asyncio.create_task(_consume(b2, seen, "b2", stop)))
    await asyncio.sleep(20)  # past the session timeout: every consequence of the replacement is in
    ended_at = time.time()
    stop.set()
    await asyncio.gather(producing, *running)
    await a.stop()
    await b2.stop()
    after = [(got, sent) for records in seen.records.values() for got, sent in records if got >= replaced_at]
    return {
        "a_rebalances": seen.revokes.get("a", 0) - revokes_before,
        "a_longest_gap_s": _longest_gap([got for got, _ in seen.records["a"]], replaced_at, ended_at),
        "oldest_record_s": max(got - sent for got, sent in after),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--away-s", type=float, default=2.0, help="how long the replaced consumer is away")
    parser.add_argument("--rate", type=float, default=300.0, help="records per second produced")
    args = parser.parse_args()
    print(machine())
    with kafka() as bootstrap:
        for static in (False, True):
            result = await one_run(bootstrap, static, args.away_s, args.rate)
            print(
                f"{'static ' if static else 'dynamic'}: A rebalanced {result['a_rebalances']:.0f}x,"
                f" A's longest gap {result['a_longest_gap_s']:.2f} s,"
                f" oldest record received {result['oldest_record_s']:.2f} s"
            )


if __name__ == "__main__":
    asyncio.run(main())
