"""`cdr import FILE...`: historical calls straight into the store, through the ingest's
own validation (``validate_batch``: the same compiled validator and pydantic model, size
limit and emitted_at skew) and the same columnar insert, so an imported call is stored
exactly as if the PBX had published it.

Each batch is resolved against the stored versions of its calls first (a correction that
moves a call: ``cdr.ingest.corrections``, as the ingestor's writer does), then gets its
change-feed positions: partition -1 and ``batch_start_ms * 1_000_000 + row``, stamped
right before its insert; batches are inserted one after another, so the feed, which reads
partition -1 only ``cdr.store.feed.IMPORT_HORIZON_S`` behind the clock, sees each batch whole and in
order (README, "Change feed").

Files are NDJSON call-ended events or CSV with the event's field names as the header
(empty cells are absent fields), plain or gzip. Rejected lines go to a rejects file
(NDJSON: file, line, kind, error, value) and never stop the import. Importing the same
file twice stores nothing twice: identical events collapse like re-delivered ones.

When it is done, each month it wrote is merged into one part (``merge_months``): a
backfill leaves several parts per month, and every read (FINAL) pays for each part
until ClickHouse's own merges catch up, an hour later for a closed month (migration
0003). Measured on 2 M calls: a page with its total 46 -> 14 ms (bench/RESULTS.md).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cdr.ingest.corrections import Corrections
from cdr.ingest.processor import Invalid, precheck
from cdr.ingest.validation import validate_batch
from cdr.model.event import CallEnded
from cdr.settings import Settings, SettingsError
from cdr.store import Store, open_store
from cdr.store.feed import IMPORT_PARTITION, ROWS_PER_MS
from cdr.store.migrations import migrate
from cdr.tenants import ZoneDirectory

log = logging.getLogger(__name__)

_INTEGER_FIELDS = frozenset({"duration", "billsec", "schema_version"})
# An empty cell of these is an absent field (null); of any other, an empty string.
_OPTIONAL_FIELDS = frozenset(name for name, spec in CallEnded.model_fields.items() if not spec.is_required())
_GZIP_MAGIC = b"\x1f\x8b"


class _ImportWriter:
    """Inserts batches one after another: resolved against the stored versions, then
    stamped with feed positions that grow from batch to batch."""

    def __init__(self, store: Store, corrections: Corrections) -> None:
        self._store = store
        self._corrections = corrections
        self._last_ms = 0
        self.months: set[int] = set()  # the partitions written (YYYYMM of time_started, UTC)

    async def write(self, rows: pa.Table) -> None:
        """``rows``: a batch's ``cdr`` columns with their canonical numbers (validate_batch)."""
        rows = await self._corrections.resolve(rows)
        # The tombstones' months too: a tombstone lies at the time its call moved from.
        self.months.update(int(m) for m in pc.unique(pc.strftime(rows.column("time_started"), "%Y%m")).to_pylist())
        if rows.num_rows > ROWS_PER_MS:
            raise ValueError(f"an import batch holds at most {ROWS_PER_MS} rows")
        # Taken right before the insert (after the lookup): the feed's horizon bounds the
        # time from this stamp to the insert being visible.
        start_ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
        self._last_ms = start_ms
        first = start_ms * ROWS_PER_MS
        rows = rows.append_column("source_partition", pa.array([IMPORT_PARTITION] * rows.num_rows, pa.int32()))
        rows = rows.append_column("source_offset", pa.array(range(first, first + rows.num_rows), pa.int64()))
        await self._store.insert_arrow("cdr", rows)


@dataclass
class ImportReport:
    lines: int = 0
    stored: int = 0
    rejected: int = 0
    files: list[str] = field(default_factory=list)


class _Source:
    """One input file: its lines as event JSON, and how far through the file we are."""

    def __init__(self, path: Path) -> None:
        try:
            self.raw = path.open("rb")
        except OSError as exc:
            raise SettingsError(f"cdr import: cannot read {path}: {exc.strerror or exc}") from exc
        self.path = path
        self.size = max(path.stat().st_size, 1)
        compressed = self.raw.peek(2)[:2] == _GZIP_MAGIC
        self.stream: gzip.GzipFile | io.BufferedReader = gzip.GzipFile(fileobj=self.raw) if compressed else self.raw

    def position(self) -> int:
        return self.raw.tell()

    def events(self) -> Iterator[tuple[int, bytes]]:
        """(line number, event JSON) for every non-empty line (CSV: every data row)."""
        head = self.stream.peek(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"{"):
            for number, line in enumerate(self.stream, start=1):
                if line.strip():
                    yield number, line.strip()
            return
        text = io.TextIOWrapper(self.stream, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        for row in reader:
            yield reader.line_num, orjson.dumps(_csv_event(row))

    def close(self) -> None:
        self.stream.close()
        self.raw.close()


def _csv_event(row: dict[str | None, Any]) -> dict[str, Any]:
    """A CSV row as the event's JSON object: empty optional cells absent, whole numbers as
    numbers (anything else is left for the model to refuse with its own message)."""
    event: dict[str, Any] = {}
    for name, value in row.items():
        if name is None or value is None or (value == "" and name in _OPTIONAL_FIELDS):
            continue  # extra cells without a header, or an optional field left empty
        if name in _INTEGER_FIELDS and value.isascii() and value.isdigit():
            event[name] = int(value)
        else:
            event[name] = value
    return event


class Progress:
    """A bar with rate and ETA on a terminal; a log line every few seconds otherwise."""

    def __init__(self, total_bytes: int, *, tty: bool) -> None:
        self.total = max(total_bytes, 1)
        self.tty = tty
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, done_bytes: int, lines: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < (0.2 if self.tty else 5.0):
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        share = min(done_bytes / self.total, 1.0)
        rate = lines / elapsed
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        if self.tty:
            bar = "#" * int(share * 30)
            sys.stderr.write(
                f"\r[{bar:<30}] {share:4.0%} {lines:,} lines {rate:,.0f}/s ETA {timedelta(seconds=round(eta))}"
            )
            if final:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            log.info(
                "import progress",
                extra={
                    "lines": lines,
                    "percent": round(share * 100, 1),
                    "lines_per_s": round(rate),
                    "eta_s": round(eta),
                },
            )


async def import_files(
    settings: Settings, paths: list[Path], rejects: Path, *, batch_size: int = 20_000, tty: bool = False
) -> ImportReport:
    sources = [_Source(path) for path in paths]  # every file readable before anything is stored
    report = ImportReport(files=[str(p) for p in paths])
    store = open_store(settings.clickhouse)
    progress = Progress(sum(s.size for s in sources), tty=tty)
    latest = datetime.now(UTC) + timedelta(seconds=settings.ingest.max_future_skew_s)
    # Naive times in each tenant's zone, and the longest call, as the ingestor reads them.
    directory = ZoneDirectory(
        settings.common.zone, settings.common.tenants_file, phone_region=settings.common.phone_region
    ).current()
    writer = _ImportWriter(store, Corrections(store, timedelta(seconds=settings.ingest.correction_grace_s)))

    async def store_batch(path: Path, lines: list[tuple[int, bytes, Invalid | None]]) -> None:
        """The ingestor's validation of a batch of lines (validate_batch); its rejects in line order."""
        checked = [k for k, (_, _, problem) in enumerate(lines) if problem is None]
        values = [lines[k][1] for k in checked]
        verdicts = validate_batch(values, directory, latest, settings.ingest.max_call_seconds)
        problems = {k: problem for k, (_, _, problem) in enumerate(lines) if problem is not None}
        problems.update({checked[i]: problem for i, problem in verdicts.invalid.items()})
        for k in sorted(problems):
            number, value, _ = lines[k]
            rejected.write(_reject(path, number, problems[k], value))
        report.rejected += len(problems)
        if verdicts.rows.num_rows:
            await writer.write(verdicts.rows)
            report.stored += verdicts.rows.num_rows

    try:
        await migrate(store, feed_retention_days=settings.api.feed_retention_days)
        with rejects.open("wb") as rejected:
            done_before = 0
            for source in sources:
                # A batch's lines: number, value and, when the size check refused it, why.
                pending: list[tuple[int, bytes, Invalid | None]] = []
                for number, value in source.events():
                    report.lines += 1
                    pending.append((number, value, precheck(value, settings.ingest.max_event_bytes)))
                    if len(pending) >= batch_size:
                        await store_batch(source.path, pending)
                        pending = []
                    progress.update(done_before + source.position(), report.lines)
                if pending:
                    await store_batch(source.path, pending)
                done_before += source.size
                source.close()
            progress.update(done_before, report.lines, final=True)
        await merge_months(store, sorted(writer.months))
    finally:
        for source in sources:
            source.close()
        await store.close()
    return report


async def merge_months(store: Store, months: list[int]) -> None:
    """Merge each month's partition of ``cdr`` into one part (a partition already in one
    merged part is skipped)."""
    for month in months:
        began = time.perf_counter()
        # A partition ID is DDL text, not a query parameter: an int formatted here.
        await store.command(
            f"OPTIMIZE TABLE {store.qualified('cdr')} PARTITION ID '{int(month)}' FINAL"
            " SETTINGS optimize_skip_merged_partitions = 1"
        )
        log.info("merged a month", extra={"month": month, "seconds": round(time.perf_counter() - began, 1)})


def _reject(path: Path, number: int, problem: Invalid, value: bytes) -> bytes:
    shown = value[:2000].decode("utf-8", "replace")
    entry = {"file": str(path), "line": number, "kind": problem.kind, "error": problem.reason, "value": shown}
    return orjson.dumps(entry) + b"\n"
