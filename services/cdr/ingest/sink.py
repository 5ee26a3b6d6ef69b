"""The Kafka dead-letter producer: invalid messages, unchanged, with their reasons."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from cdr.ingest.dlq import DeadLetter


class KafkaDeadLetters:
    """Publishes dead letters with acks=all; returns only once the broker has them all."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self._topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            # Oversized messages are dead-lettered as they came, so allow what the broker allows.
            max_request_size=16 * 1024 * 1024,
            client_id="cdr-ingest-dlq",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, letters: list[DeadLetter]) -> None:
        sent = [
            await self._producer.send(
                self._topic,
                value=letter.value,
                key=letter.key,
                headers=letter.dlq_headers(),
            )
            for letter in letters
        ]
        await asyncio.gather(*sent)
