"""The pipeline's validation when the ClickHouse parse cannot run: pydantic takes over.

Its own module: chdb allows one embedded store per process at a time, and
test_sqlparse.py keeps one open for its whole module."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
from aiokafka import ConsumerRecord

from cdr.ingest.dlq import DeadLetter, DlqLimit
from cdr.ingest.pipeline import Pipeline
from cdr.ingest.sqlparse import SqlParser
from cdr.ingest.writer import BatchWriter
from cdr.metrics import Metrics
from cdr.simulate import make_event
from cdr.store import Store

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def event(seed: int) -> dict[str, object]:
    return make_event(random.Random(seed), "t.example", datetime(2024, 3, 9, 10, 11, 12, tzinfo=UTC))


async def test_a_failing_clickhouse_parse_falls_back_to_pydantic(tmp_path: Path) -> None:
    """The fast path is an optimisation: when chdb cannot run it, pydantic takes the batch
    (here the store is closed: every query fails with StoreUnavailable)."""
    closed = Store(f"chdb://{tmp_path}", database="cdr")
    await closed.close()
    pipeline = Pipeline(
        zone=HCM,
        max_event_bytes=65_536,
        writer=BatchWriter(closed, Metrics(), asyncio.Event(), initial_backoff_s=0.01, max_backoff_s=0.01),
        dead_letters=_NoDeadLetters(),
        dlq_limit=DlqLimit(0.5, 100, 10),
        metrics=Metrics(),
        stopping=asyncio.Event(),
        sql_parser=SqlParser(closed, HCM, min_batch=1),
    )
    values = [orjson.dumps(event(seed)) for seed in range(3)] + [b"{oops"]
    records = tuple(
        ConsumerRecord("calls", 0, offset, 0, 0, None, value, None, 0, len(value), [])
        for offset, value in enumerate(values)
    )
    rows, letters = await pipeline._validate(records)
    assert rows.column("id").to_pylist() == [event(seed)["id"] for seed in range(3)]
    assert [letter.offset for letter in letters] == [3]


class _NoDeadLetters:
    async def send(self, letters: list[DeadLetter]) -> None:
        raise AssertionError("not called by _validate")
