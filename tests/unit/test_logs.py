"""The Kafka client's repeated lines: the first of a kind passes, repeats are counted."""

from __future__ import annotations

import logging
import time

from cdr.logs import RepeatFilter


def _record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("broker-1",), None)


def test_repeats_within_the_interval_are_counted_then_reported() -> None:
    quiet = RepeatFilter(interval_s=0.2)
    assert quiet.filter(_record("aiokafka.conn", "Unable connect to %s"))
    assert not any(quiet.filter(_record("aiokafka.conn", "Unable connect to %s")) for _ in range(5))
    assert quiet.filter(_record("aiokafka.client", "another kind of line %s"))  # its own kind
    time.sleep(0.25)
    again = _record("aiokafka.conn", "Unable connect to %s")
    assert quiet.filter(again)
    assert again.repeated == 5 and again.levelno == logging.WARNING  # ours report connectivity
    assert quiet.filter(_record("cdr.ingest.health", "Kafka unreachable"))  # our lines: never filtered
    assert quiet.filter(_record("cdr.ingest.health", "Kafka unreachable"))
