"""The stored versions of a batch's candidates are looked up ``_LOOKUP_IDS`` ids at a time: a
backfill of late events makes every event of a batch a candidate, and a list of 20,000 ids
as one parameter would reach a ClickHouse server as a form field over its 128 KiB cap."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from cdr.ingest import corrections
from cdr.ingest.corrections import Corrections


class _KeyTable:
    """A store holding one stored version per id, answering the lookup's query, and noting
    the ids each lookup named."""

    def __init__(self, stored: dict[uuid.UUID, tuple[str, int, int]]) -> None:
        self.stored = stored
        self.asked: list[list[uuid.UUID]] = []

    def qualified(self, table: str) -> str:
        return f"cdr.{table}"

    async def query(self, sql: str, params: dict[str, Any], *, writer: bool = False) -> list[list[Any]]:
        assert writer and "cdr.cdr_key_by_id" in sql
        self.asked.append(list(params["ids"]))
        return [
            [self.stored[i][0], str(i), self.stored[i][1], self.stored[i][2]] for i in params["ids"] if i in self.stored
        ]


async def test_a_lookup_names_at_most_its_share_of_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corrections, "_LOOKUP_IDS", 3)
    ids = [uuid.uuid4() for _ in range(7)]
    table = _KeyTable({i: ("t1.example", 1_000 * n, 2_000 * n) for n, i in enumerate(ids[:5])})
    found = await Corrections(table, timedelta(seconds=60))._stored(  # type: ignore[arg-type]
        {("t1.example", str(i)) for i in ids} | {("t2.example", str(ids[0]))}
    )
    assert sorted(len(asked) for asked in table.asked) == [1, 3, 3]
    assert sorted(i for asked in table.asked for i in asked) == sorted(ids)
    assert {key: (v.time_ms, v.emitted_ms) for key, v in found} == {
        ("t1.example", str(i)): (1_000 * n, 2_000 * n) for n, i in enumerate(ids[:5])
    }
