from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdr.ingest.app import Ingestor, build_ingestor
from cdr.metrics import Metrics
from cdr.settings import Settings, load_settings
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from tests.helpers import create_topics, unique


@dataclass
class IngestEnv:
    settings: Settings
    store: Store
    metrics: Metrics

    @asynccontextmanager
    async def running(self, **overrides: object) -> AsyncIterator[Ingestor]:
        settings = self.settings.replaced(**overrides)
        ingestor = build_ingestor(settings.kafka, settings.ingest, settings.common, self.store, self.metrics)
        await ingestor.start()
        try:
            yield ingestor
        finally:
            await ingestor.stop()


def make_settings(kafka_bootstrap: str, data_dir: Path, backend: dict[str, str], **extra: object) -> Settings:
    topic = unique("calls")
    return load_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=topic,
        kafka_dlq_topic=topic + ".dlq",
        kafka_group_id=unique("group"),
        **({"clickhouse_url": None} | backend),
        clickhouse_database=unique("db").replace("-", "_"),
        data_dir=data_dir,
        batch_time_ms=200,
        insert_retry_initial_ms=50,
        insert_retry_max_ms=500,
        **extra,
    )


@pytest.fixture
async def ingest_env(kafka_bootstrap: str, tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[IngestEnv]:
    settings = make_settings(kafka_bootstrap, tmp_path / "store", backend)
    await create_topics(kafka_bootstrap, settings.kafka.kafka_topic, settings.kafka.kafka_dlq_topic)
    store = open_store(settings.clickhouse)
    await migrate(store)
    try:
        yield IngestEnv(settings, store, Metrics())
    finally:
        await store.close()
        await asyncio.sleep(0)
