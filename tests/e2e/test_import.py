"""`cdr import` as an operator runs it: 100,000+ NDJSON lines (gzip) with bad ones mixed
in store exactly the good ones, the bad ones land in the rejects file with their reasons,
a second run stores nothing twice; CSV with the event's field names works too."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdr.settings import load_settings
from cdr.store import open_store
from tests.e2e.own_broker import exit_code, json_lines
from tests.helpers import events, service_env

GOOD = 100_000


def _bad_lines() -> list[bytes]:
    sample = events(3, seed=811, tenants=("imported.example",))
    wrong_billsec = {**sample[0], "billsec": sample[0]["duration"] + 1}
    missing = {k: v for k, v in sample[1].items() if k != "tenant_id"}
    return [b"not json at all", b"[1, 2]", orjson.dumps(wrong_billsec), orjson.dumps(missing), b'{"event": "x"}']


async def _stored(store_dir: Path) -> list[Any]:
    store = open_store(load_settings(data_dir=store_dir, clickhouse_url=None).clickhouse)
    try:
        return await store.query("SELECT tenant_id, count() FROM cdr.cdr FINAL GROUP BY tenant_id ORDER BY tenant_id")
    finally:
        await store.close()


async def test_import_stores_the_good_lines_once_and_rejects_the_bad(kafka_bootstrap: str, tmp_path: Path) -> None:
    good = events(GOOD, seed=812, tenants=("imported.example", "other.example"), spacing_s=2)
    bad = _bad_lines()
    lines = [orjson.dumps(e) for e in good]
    for i, line in enumerate(bad):
        lines.insert(1 + i * 20_000, line)  # spread through the file
    calls = tmp_path / "calls.ndjson.gz"
    calls.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    by_csv = events(500, seed=813, tenants=("csv.example",))
    table = tmp_path / "calls.csv"
    with table.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(by_csv[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in e.items()} for e in by_csv)

    env, _ = await service_env(kafka_bootstrap, tmp_path / "store")
    rejects = tmp_path / "rejects.ndjson"
    log = tmp_path / "import.log"
    for run in (1, 2):
        command = f"import {calls} {table} --rejects {rejects} --batch-size 7000"
        assert await exit_code(command, env, log, timeout=300) == 0, log.read_text()[-3000:]
        done = [x for x in json_lines(log) if str(x["msg"]).startswith("import done")][-1]
        assert (done["lines"], done["stored"], done["rejected"]) == (GOOD + len(bad) + 500, GOOD + 500, len(bad)), run
        refused = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
        assert [r["line"] for r in refused] == [2 + i * 20_000 for i in range(len(bad))]
        assert {r["kind"] for r in refused} == {"not_json", "not_object", "invalid_event"}
        assert any("billsec" in r["error"] for r in refused) and any("tenant_id" in r["error"] for r in refused)
    tenants = dict(map(tuple, await _stored(tmp_path / "store")))  # type: ignore[arg-type]
    want_import = sum(1 for e in good if e["tenant_id"] == "imported.example")
    assert tenants == {"csv.example": 500, "imported.example": want_import, "other.example": GOOD - want_import}
    progress = [x for x in json_lines(log) if x["msg"] == "import progress"]
    assert all(0 <= float(str(x["percent"])) <= 100 for x in progress)


async def test_an_unreadable_file_fails_before_anything_is_stored(kafka_bootstrap: str, tmp_path: Path) -> None:
    env, _ = await service_env(kafka_bootstrap, tmp_path / "store")
    present = tmp_path / "present.ndjson"
    present.write_bytes(orjson.dumps(events(1, seed=814)[0]) + b"\n")
    log = tmp_path / "import.log"
    assert await exit_code(f"import {present} {tmp_path / 'missing.ndjson'}", env, log) == 2
    text = log.read_text()
    assert "missing.ndjson" in text and "Traceback" not in text
    assert not (tmp_path / "store").exists() or await _stored(tmp_path / "store") == []


def test_csv_rows_become_events() -> None:
    from cdr.importer import _csv_event

    row = next(csv.DictReader(io.StringIO("duration,billsec,extension,sip_call_id,cause\n30,x,,,BUSY\n")))
    assert _csv_event(row) == {"duration": 30, "billsec": "x", "sip_call_id": "", "cause": "BUSY"}


def test_the_progress_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from cdr.importer import Progress

    bar = Progress(1_000, tty=True)
    bar.update(500, 50, final=True)
    shown = capsys.readouterr().err
    assert shown.startswith("\r[###############") and "50%" in shown and "50 lines" in shown and "ETA" in shown
