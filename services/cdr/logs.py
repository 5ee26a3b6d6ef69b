"""Structured (JSON lines) logging for both services."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


_HANDLED_BY_US = ("Unable connect to", "Unable to update metadata", "Group Coordinator Request failed")


class RepeatFilter(logging.Filter):
    """Library loggers (the Kafka client above all) repeat one line many times a second
    while a dependency is away. The first line of each kind passes; the same kind again
    within ``interval_s`` is counted, not written, and the next one that passes says how
    many were left out. Our own loggers are not filtered: the health probe writes one
    line when Kafka goes away, a reminder every minute, one when it is back."""

    def __init__(self, interval_s: float = 60.0, prefixes: tuple[str, ...] = ("aiokafka", "faststream")) -> None:
        super().__init__()
        self._interval = interval_s
        self._prefixes = prefixes
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # kind -> (passed at, left out since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        if record.levelno >= logging.ERROR and str(record.msg).startswith(_HANDLED_BY_US):
            # Connection failures are retried and reported by the ingestor itself (start-up
            # retries, the health probe); the client's line is detail, not the error.
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        kind = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        passed_at, left_out = self._seen.get(kind, (-self._interval, 0))
        if now - passed_at < self._interval:
            self._seen[kind] = (passed_at, left_out + 1)
            return False
        if len(self._seen) > 1_000:  # message templates are few; bound it anyway
            self._seen.clear()
        self._seen[kind] = (now, 0)
        if left_out:
            record.repeated = left_out
            record.repeated_in_s = round(now - passed_at)
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    formatter = JsonFormatter()
    formatter.converter = __import__("time").gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka reports every transient coordinator hiccup at ERROR/WARNING; keep ours readable.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
