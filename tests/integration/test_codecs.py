"""Record batches as producers write them, through a real broker: every compression codec
Kafka has, transactions, and a batch that cannot be read."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.helpers import committed_offsets, encoded, events, produce, stored_ids, unique, wait_for
from tests.integration.conftest import IngestEnv

CODECS = ("gzip", "snappy", "lz4", "zstd")


async def _end_offsets(bootstrap: str, topic: str, partitions: int = 4) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def test_batches_in_every_codec_are_stored(ingest_env: IngestEnv) -> None:
    """A librdkafka PBX may compress with any of Kafka's codecs: each is decoded and stored,
    none is dead-lettered."""
    settings = ingest_env.settings
    bootstrap, topic = settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic
    sent = {codec: events(200, seed=30 + i) for i, codec in enumerate(CODECS)}
    for codec, evs in sent.items():
        await produce(bootstrap, topic, encoded(evs), compression=codec)
    expected = sorted(e["id"] for evs in sent.values() for e in evs)

    async with ingest_env.running() as ingestor:

        async def all_committed() -> bool:
            return sum(ingestor.pipeline.committed.values()) >= len(expected)

        await wait_for(all_committed, 60, "every codec's batches committed")

    assert sorted(await stored_ids(ingest_env.store)) == expected
    assert sum((await _end_offsets(bootstrap, settings.kafka.kafka_dlq_topic)).values()) == 0


async def test_an_aborted_transaction_is_not_stored(ingest_env: IngestEnv) -> None:
    """Events of a transaction the producer aborted are in the log, followed by the abort
    marker: read_committed skips them, read_uncommitted would store them."""
    settings = ingest_env.settings
    bootstrap, topic = settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic
    aborted, committed = events(100, seed=41), events(100, seed=42)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("txn"))
    await producer.start()
    try:
        await producer.begin_transaction()
        # Each send awaited to the broker's ack: the aborted events are in the log.
        sends = [await producer.send(topic, value, key=key, partition=0) for key, value in encoded(aborted)]
        for sent in sends:
            await sent
        await producer.abort_transaction()
        async with producer.transaction():
            for key, value in encoded(committed):
                await producer.send(topic, value, key=key, partition=0)
    finally:
        await producer.stop()
    # The group commits up to its last record, short of the commit marker after it.
    last = (await _end_offsets(bootstrap, topic))[0] - 1

    async with ingest_env.running():
        await wait_for(
            lambda: _committed_at_least(bootstrap, settings.kafka.kafka_group_id, topic, last),
            60,
            "the group committed past the committed transaction",
        )

    # Stored in offset order, so everything before the committed transaction's end was read.
    assert sorted(await stored_ids(ingest_env.store)) == sorted(e["id"] for e in committed)
    assert sum((await _end_offsets(bootstrap, settings.kafka.kafka_dlq_topic)).values()) == 0


async def _committed_at_least(bootstrap: str, group: str, topic: str, offset: int, partition: int = 0) -> bool:
    return (await committed_offsets(bootstrap, group, topic))[partition] >= offset


async def _partition_dir(bootstrap: str, topic: str, partition: int) -> Path | None:
    """Where the broker keeps the partition's log, if that is on this machine."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        broker = str(cluster["brokers"][0]["node_id"])
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, broker, {"log.dirs": None})]
        )
    finally:
        await admin.close()
    [resource] = response.resources
    [entry] = resource[4]
    for log_dir in entry[1].split(","):
        found = Path(log_dir) / f"{topic}-{partition}"
        if found.is_dir():
            return found
    return None


def _damage_batch(segment: Path, base_offset: int) -> None:
    """Flip one byte in the records of the v2 batch starting at ``base_offset``, on disk
    (as a bad disk would): its CRC no longer matches."""
    data = segment.read_bytes()
    position = 0
    while position < len(data):
        offset, length = struct.unpack_from(">qi", data, position)
        if offset == base_offset:
            target = position + 61 + 4  # past the batch header, inside the first record
            with segment.open("r+b") as f:
                f.seek(target)
                f.write(bytes([data[target] ^ 0xFF]))
            return
        position += 12 + length
    raise AssertionError(f"no batch at offset {base_offset} in {segment}")


async def test_a_corrupt_batch_is_never_committed_past(ingest_env: IngestEnv, caplog: pytest.LogCaptureFixture) -> None:
    """A batch whose bytes were damaged on the broker's disk is neither read nor skipped:
    the partition stops before it, retrying, and nothing at or past it is committed,
    stored or dead-lettered. (aiokafka drops the whole fetch at its first bad batch, so
    the stop can be up to a fetch before it.)"""
    settings = ingest_env.settings
    bootstrap, topic = settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic
    before, damaged, after = events(100, seed=51), events(20, seed=52), events(100, seed=53)
    await produce(bootstrap, topic, encoded(before), partition=0)
    await produce(bootstrap, topic, encoded(damaged), partition=0, compression="gzip")
    await produce(bootstrap, topic, encoded(after), partition=0)
    where = await _partition_dir(bootstrap, topic, 0)
    if where is None:
        pytest.skip("the broker's log is not on this machine (a container): its bytes cannot be damaged")
    _damage_batch(where / f"{0:020d}.log", len(before))

    def refusals() -> int:
        return sum(r.exc_info is not None and "Invalid CRC" in str(r.exc_info[1]) for r in caplog.records)

    caplog.set_level(logging.ERROR)
    async with ingest_env.running():

        async def refused_twice() -> bool:
            return refusals() >= 2

        await wait_for(refused_twice, 60, "the damaged batch refused twice (a retry)")
        assert (await committed_offsets(bootstrap, settings.kafka.kafka_group_id, topic))[0] <= len(before)

    assert set(await stored_ids(ingest_env.store)) <= {e["id"] for e in before}
    assert sum((await _end_offsets(bootstrap, settings.kafka.kafka_dlq_topic)).values()) == 0
