"""The Kafka dead-letter producer: invalid messages, unchanged, with their reasons."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError

from cdr.ingest.dlq import DeadLetter
from cdr.ingest.retry import Backoff
from cdr.metrics import Metrics
from cdr.settings import SettingsError

log = logging.getLogger(__name__)


class KafkaDeadLetters:
    """Publishes dead letters with acks=all; returns only once the broker has them all.

    A send that cannot complete within ``timeout_s`` (no leader, broker away, topic gone)
    is retried with back-off, never fatal; meanwhile no offset moves, and ``failing_since``
    tells readiness how long it has been failing. Its client also serves the ingestor's
    start-up checks and health probe."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        security: dict[str, Any],
        metrics: Metrics,
        stopping: asyncio.Event,
        timeout_s: float,
        initial_backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self._servers = bootstrap_servers
        self._topic = topic
        self._security = security
        self._metrics = metrics
        self._timeout = timeout_s
        self._backoff = Backoff(initial_backoff_s, max_backoff_s, stopping)
        self._producer: AIOKafkaProducer | None = None
        self.failing_since: float | None = None

    async def start(self) -> None:
        """Connect (KafkaError while the cluster is unreachable: the caller retries)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            acks="all",
            enable_idempotence=True,
            # Values are cut to CDR_MAX_EVENT_BYTES (DeadLetter.dlq_value); gzip keeps a burst
            # of letters small on the wire and on disk.
            compression_type="gzip",
            request_timeout_ms=int(self._timeout * 1000),
            client_id="cdr-ingest-dlq",
            **self._security,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def require_topics(self, wanted: dict[str, str]) -> None:
        """Fail fast when a topic the ingestor needs is missing or not ours to use.
        ``wanted``: topic -> the setting that names it."""
        metadata = await self.probe()
        for topic, setting in wanted.items():
            if topic in metadata.unauthorized_topics:
                raise SettingsError(f"{setting}: not authorized to use topic {topic!r} (check the Kafka ACLs)")
            if topic not in metadata.topics():
                raise SettingsError(
                    f"{setting}: topic {topic!r} does not exist; create it (`cdr create-topics`) or fix the name"
                )

    async def probe(self) -> ClusterMetadata:
        """The cluster's metadata, in one round trip; raises if it does not answer in time."""
        if self._producer is None:
            raise KafkaError("dead-letter producer not started")
        metadata: ClusterMetadata = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), self._timeout)
        return metadata

    async def send(self, letters: list[DeadLetter]) -> None:
        async def send_in_time() -> None:
            await asyncio.wait_for(self._send_once(letters), self._timeout)

        def failed(attempt: int, exc: BaseException, retry_in_s: float) -> None:
            self._metrics.dlq_send_failures.inc()
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            if attempt == 1 or attempt % 10 == 0:
                log.error(
                    "dead-letter send failed, retrying",
                    extra={"topic": self._topic, "letters": len(letters), "attempt": attempt, "error": repr(exc)},
                )

        attempts = await self._backoff.retry(
            send_in_time,
            transient=(KafkaError, TimeoutError),
            on_failure=failed,
            what=f"a dead-letter send of {len(letters)}",
        )
        if self.failing_since is not None:
            log.info("dead-letter send succeeded after retries", extra={"attempts": attempts})
            self.failing_since = None

    async def _send_once(self, letters: list[DeadLetter]) -> None:
        if self._producer is None:
            raise KafkaError("dead-letter producer not started")
        sent = [
            await self._producer.send(self._topic, value=letter.dlq_value, key=letter.key, headers=letter.dlq_headers())
            for letter in letters
        ]
        await asyncio.gather(*sent)
