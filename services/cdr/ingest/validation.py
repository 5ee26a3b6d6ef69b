"""A batch's verdicts, computed on a thread beside the consumer.

The rules run compiled (``cdr_validate``, the Rust crate in rust/cdr-validate): one pass
over the batch's raw values straight into the ``cdr`` table's Arrow columns, with the GIL
released. The pydantic model ``CallEnded`` stays the contract: it decides (and words the
dead-letter reason of) each message the compiled validator refuses or leaves to it, a
valid event in a rarer shape (integer timestamps, a naive time where its zone's offset
changes, ...). ``tests/unit/test_compiled_validation.py`` holds the two to the same
answers.

The compiled pass releases the GIL, so the consumer keeps fetching and the previous
batch's insert keeps running meanwhile: one process kept up with the two worker
processes it replaced, at ~400 MB less (bench/RESULTS.md, Issue 30).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
from cdr_validate import Rules

from cdr.ingest.processor import Invalid, recording_file, to_table, validate
from cdr.model.event import MAX_CALL_S, CallEnded
from cdr.phones import with_canonical_numbers
from cdr.tenants import TenantZones, ZoneDirectory

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class NaiveTimes:
    """How the compiled validator reads a zone's naive times: the zone's one offset over
    [since, until), both as naive local microseconds. Outside that span (or in a zone whose
    offset changes within the years it takes) naive times are left to the model, which
    reads them with the zone itself."""

    offset_us: int
    since_us: int
    until_us: int

    @classmethod
    @cache  # one walk per zone and process, whatever number of tenants share it
    def for_zone(cls, zone: ZoneInfo) -> NaiveTimes:
        """Walks back a day at a time from 2100 to the zone's last offset change."""
        end = datetime(2100, 1, 1, tzinfo=UTC)
        offset = end.astimezone(zone).utcoffset() or timedelta(0)
        moment = end
        day = timedelta(days=1)
        while moment > _EPOCH:
            moment -= day
            if moment.astimezone(zone).utcoffset() != offset:
                moment += 2 * day  # a day's margin past the change, in either reading of local time
                break

        def local_us(t: datetime) -> int:
            return (t + offset - _EPOCH) // _US

        return cls(offset // _US, local_us(moment), local_us(end - day))

    @property
    def parts(self) -> tuple[int, int, int]:
        return self.offset_us, self.since_us, self.until_us


@dataclass
class _Compiled:
    """The compiled rules of the zones and limit last used. Key and rules are one value,
    replaced whole: two batches validated at once with other zones (two pipelines in one
    process) never read one's key with the other's rules."""

    last: tuple[tuple[TenantZones, int], Rules] | None = None

    def of(self, zones: TenantZones, max_call_s: int) -> Rules:
        last = self.last
        if last is not None and last[0] == (zones, max_call_s):
            return last[1]
        tenants = {tenant: NaiveTimes.for_zone(zone).parts for tenant, zone in zones.by_tenant.items()}
        rules = Rules(NaiveTimes.for_zone(zones.default).parts, tenants, max_call_s)
        self.last = ((zones, max_call_s), rules)
        return rules


_COMPILED = _Compiled()


@dataclass(frozen=True)
class Compiled:
    """The compiled validator's answer for a batch: ``rows``, the accepted events as
    ``cdr`` columns with ``n`` (their index in the batch) first; ``refused``, the field at
    fault ("" for the message as a whole or a rule across fields) and why, by index;
    ``deferred``, why each message left to the model is, by index."""

    rows: pa.Table
    refused: dict[int, tuple[str, str]]
    deferred: dict[int, str]


def compiled_verdicts(
    values: Sequence[bytes], zones: TenantZones, latest_emitted_at: datetime, max_call_s: int = MAX_CALL_S
) -> Compiled:
    rules = _COMPILED.of(zones, max_call_s)
    columns, refused, deferred = rules.validate(list(values), (latest_emitted_at - _EPOCH) // _US)
    rows = _with_recording_files(pa.Table.from_batches([pa.record_batch(columns)]))
    return Compiled(rows, {n: (name, why) for n, name, why in refused}, dict(deferred))


def _with_recording_files(rows: pa.Table) -> pa.Table:
    """The file names the compiled validator leaves null (URLs beyond its plain shape:
    queries, fragments, non-ASCII) from ``processor.recording_file``, urlsplit's reading."""
    files = rows.column("recording_file").combine_chunks()
    if not files.null_count:
        return rows
    missing = files.is_null()
    urls = rows.column("recording_url").combine_chunks().filter(missing).to_pylist()
    names = pa.array([recording_file(url) for url in urls], pa.string())
    at = rows.schema.get_field_index("recording_file")
    return rows.set_column(at, rows.schema.field(at), pc.replace_with_mask(files, missing, names))


@dataclass(frozen=True)
class Verdicts:
    """``rows``: the valid events as ``cdr`` columns, in their order in the batch;
    ``invalid``: why each refused one (by its index in the batch) is refused; how many
    events the compiled validator stored and how many the model decided."""

    rows: pa.Table
    invalid: dict[int, Invalid] = field(default_factory=dict)
    compiled: int = 0
    model: int = 0


def validate_batch(
    values: Sequence[bytes], zones: TenantZones, latest_emitted_at: datetime, max_call_s: int = MAX_CALL_S
) -> Verdicts:
    """The compiled validator over the whole batch; the model for the messages it refuses
    (the model words the dead-letter reason) or leaves to it. Then each number's
    canonical form (cdr.phones), once per batch."""
    compiled = compiled_verdicts(values, zones, latest_emitted_at, max_call_s)
    invalid: dict[int, Invalid] = {}
    events: list[CallEnded] = []
    positions: list[int] = []
    for i in sorted([*compiled.refused, *compiled.deferred]):
        outcome = validate(
            values[i], zones.default, latest_emitted_at, tenant_zones=zones.by_tenant, max_call_s=max_call_s
        )
        if isinstance(outcome, Invalid):
            invalid[i] = outcome
            continue
        if i in compiled.refused:
            # The contract wins; tests/unit/test_compiled_validation.py exists to keep this away.
            name, why = compiled.refused[i]
            log.error("the compiled validator refused an event the model accepts: %s: %s", name or "event", why)
        events.append(outcome)
        positions.append(i)
    rows = compiled.rows
    if events:
        rows = pa.concat_tables([rows, to_table(events, positions)])
        rows = rows.take(pc.sort_indices(rows.column("n")))
    rows = with_canonical_numbers(rows.drop_columns(["n"]), zones.phones)
    return Verdicts(rows, invalid, compiled.rows.num_rows, len(compiled.refused) + len(compiled.deferred))


class Validator:
    """Runs ``validate_batch`` on a thread beside the event loop: the compiled validator
    releases the GIL, so the consumer fetches and the store inserts meanwhile. Naive
    times are read in ``zones``: one zone, or the tenants' zones of a directory (a change
    to it applies from the next batch)."""

    def __init__(self, zones: ZoneInfo | ZoneDirectory, max_call_s: int = MAX_CALL_S) -> None:
        self._zones = zones if isinstance(zones, ZoneDirectory) else ZoneDirectory(zones)
        self._max_call_s = max_call_s

    async def __call__(self, values: Sequence[bytes], latest_emitted_at: datetime) -> Verdicts:
        zones = self._zones.current()
        return await asyncio.to_thread(validate_batch, values, zones, latest_emitted_at, self._max_call_s)
