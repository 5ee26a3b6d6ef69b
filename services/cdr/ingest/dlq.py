"""Dead letters: where invalid messages go, and the limit that stops a broken stream."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cdr.ingest.processor import Invalid

HEADER_ERROR = "x-dlq-error"
HEADER_KIND = "x-dlq-kind"
HEADER_TOPIC = "x-dlq-source-topic"
HEADER_PARTITION = "x-dlq-source-partition"
HEADER_OFFSET = "x-dlq-source-offset"
HEADER_TIMESTAMP = "x-dlq-source-timestamp"
HEADER_ORIGINAL_SIZE = "x-dlq-original-size"


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message, unchanged, with where it came from and why it was refused."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    invalid: Invalid
    max_value_bytes: int = 1 << 62

    @property
    def dlq_value(self) -> bytes | None:
        """The message as it came, or its first ``max_value_bytes`` when larger: a value
        the DLQ topic would refuse (brokers take 1 MB by default) would stall ingest on a
        send that can never succeed. The original size is then in a header. A message with
        neither key nor value (a keyless tombstone, an unread batch) goes as an empty value:
        a Kafka record needs one of them."""
        if self.value is None and self.key is None:
            return b""
        if self.value is None or len(self.value) <= self.max_value_bytes:
            return self.value
        return self.value[: self.max_value_bytes]

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        # Original headers first (minus stale DLQ ones), then ours.
        # Header names are case-insensitive to people: an incoming X-DLQ-Error is stale too.
        kept = [(k, v) for k, v in self.headers if not k.lower().startswith("x-dlq-")]
        return [
            *kept,
            (HEADER_ERROR, self.invalid.reason.encode()),
            (HEADER_KIND, self.invalid.kind.encode()),
            (HEADER_TOPIC, self.topic.encode()),
            (HEADER_PARTITION, str(self.partition).encode()),
            (HEADER_OFFSET, str(self.offset).encode()),
            (HEADER_TIMESTAMP, str(self.timestamp).encode()),
            *(
                [(HEADER_ORIGINAL_SIZE, str(len(self.value)).encode())]
                if self.value is not None and len(self.value) > self.max_value_bytes
                else []
            ),
        ]


class DlqLimitExceeded(Exception):
    """Too many invalid messages in one partition: stop rather than dead-letter everything."""


@dataclass
class DlqLimit:
    """Per partition, the share of invalid messages among the last ``window`` ones.

    Exceeding ``max_ratio`` (once ``min_messages`` were seen) means something is
    systematically wrong (a PBX upgrade, the wrong topic), and the consumer stops.
    """

    max_ratio: float
    window: int
    min_messages: int
    _recent: dict[tuple[str, int], deque[bool]] = field(default_factory=dict)

    def observe(self, topic: str, partition: int, invalid_flags: list[bool]) -> None:
        """Record one batch's outcomes for a partition; raises DlqLimitExceeded."""
        recent = self._recent.setdefault((topic, partition), deque(maxlen=self.window))
        recent.extend(invalid_flags)
        seen = len(recent)
        if seen < self.min_messages:
            return
        bad = sum(recent)
        if bad / seen > self.max_ratio:
            raise DlqLimitExceeded(
                f"{bad} of the last {seen} messages of {topic}[{partition}] are invalid "
                f"(limit {self.max_ratio:.0%}); stopping instead of dead-lettering them"
            )

    def forget(self, topic: str, partition: int) -> None:
        self._recent.pop((topic, partition), None)
