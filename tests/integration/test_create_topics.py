"""`cdr create-topics` on the real broker: the replication factor is the brokers' default
unless set, and one the cluster cannot hold is refused before anything is created."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from cdr.settings import SettingsError, load_settings
from cdr.topics import create_topics
from tests.helpers import unique

pytestmark = pytest.mark.kafka


async def _replicas(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    """Each topic's replication factors, one per partition (a set: they must agree)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        listed = set(await admin.list_topics())
    finally:
        await admin.close()
    return {
        t["topic"]: {len(p["replicas"]) for p in t["partitions"]}
        for t in described
        if t["topic"] in listed and t["error_code"] == 0
    }


async def test_the_default_is_the_brokers_replication_factor(kafka_bootstrap: str) -> None:
    topic = unique("calls")
    settings = load_settings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic=topic, kafka_dlq_topic=topic + ".dlq", kafka_partitions=3
    )
    assert settings.kafka.kafka_replication_factor == -1
    assert await create_topics(settings.kafka) == [topic, topic + ".dlq"]
    # The single test broker's default.replication.factor is 1.
    assert await _replicas(kafka_bootstrap, [topic, topic + ".dlq"]) == {topic: {1}, topic + ".dlq": {1}}
    assert await create_topics(settings.kafka) == []  # a second run finds them


async def test_a_factor_above_the_broker_count_is_refused_before_creating(kafka_bootstrap: str) -> None:
    topic = unique("calls")
    settings = load_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=topic,
        kafka_dlq_topic=topic + ".dlq",
        kafka_replication_factor=2,
    )
    with pytest.raises(SettingsError, match=r"CDR_KAFKA_REPLICATION_FACTOR: replication factor 2 is more than the 1"):
        await create_topics(settings.kafka)
    assert await _replicas(kafka_bootstrap, [topic, topic + ".dlq"]) == {}
