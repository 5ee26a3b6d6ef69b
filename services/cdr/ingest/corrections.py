"""One record per (tenant_id, id) when a correction moves time_started.

``cdr`` is sorted by (tenant_id, time_started, id), so FINAL collapses the versions of a
call that share its start time; a version at another start time is another key. Before a
batch is written, the versions of one call at different start times -- in the batch, or
one in the batch and the newest stored one -- are resolved here, so that exactly one key
of the call stays live (``superseded = 0``, what every read keeps after FINAL):

- the newest version (greatest emitted_at; on a tie the one stored first) is its live key;
- an incoming version at another time than the newest is written as a tombstone:
  ``superseded = 1`` and the newest's emitted_at, so that FINAL picks it over every older
  version at its key, a later re-delivery of itself included;
- a newest version that moves the call away from the stored one writes a tombstone at the
  stored version's key: the new version's values, with ``superseded = 1``.

Which stored versions are looked up: a lookup of every event would read a granule of the
key table per event (bench/RESULTS.md), so only the events that may be corrections are
looked up. A call's first version is emitted when the call ends (EVENTS.md), so its
emitted_at lies within ``grace`` after its time_ended; an event outside that band is a
later version (or a late one) and is looked up, as are the calls with versions at several
start times in one batch. The first version of a call needs no lookup: nothing of its call
is stored before it, because every event of one call is in one partition, in the order it
was published, and batches are written in that order. A re-delivered older version whose
key was superseded meets the tombstone there.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from cdr.store import Store

# Ids one lookup names at most. A server takes a long parameter as a form field, capped at
# 128 KiB (http_max_field_value_size): 3,000 ids are ~117 KB as text. A batch of late events (a
# backfill: every event a candidate) is looked up in several reads rather than failing (and
# being retried) forever.
_LOOKUP_IDS = 3_000
# The newest stored live version of each (tenant_id, id) asked for, as epoch milliseconds.
_STORED = (
    "SELECT tenant_id, toString(id), toUnixTimestamp64Milli(time_started), toUnixTimestamp64Milli(emitted_at)"
    " FROM {table} WHERE id IN {{ids:Array(UUID)}}"
)


@dataclass(frozen=True)
class _Version:
    time_ms: int
    emitted_ms: int
    row: int | None  # its row in the batch; None: the stored version


class Corrections:
    """Resolves a batch's versions against each other and against the stored ones."""

    def __init__(self, store: Store, grace: timedelta, table: str = "cdr") -> None:
        self._store = store
        self._grace_ms = int(grace.total_seconds() * 1000)
        self._keys = store.qualified(f"{table}_key_by_id")

    async def resolve(self, rows: pa.Table) -> pa.Table:
        """``rows`` as they must be inserted: unchanged when no version of a call moves it,
        else with a ``superseded`` column and the tombstones appended."""
        wanted = _candidates(rows, self._grace_ms)
        if wanted is None:
            return rows
        # Only the candidates' rows become Python objects: all of a batch's would cost the
        # event loop ~2.5-5 us a row (bench/RESULTS.md, "Session 14").
        picked = pc.indices_nonzero(wanted)
        some = rows.take(picked).select(["tenant_id", "id", "time_started", "emitted_at"])
        versions: dict[tuple[str, str], list[_Version]] = defaultdict(list)
        for row, tenant, id_, started, emitted in zip(
            picked.to_pylist(),
            some.column("tenant_id").to_pylist(),
            some.column("id").to_pylist(),
            pc.cast(some.column("time_started"), pa.int64()).to_pylist(),
            pc.cast(some.column("emitted_at"), pa.int64()).to_pylist(),
            strict=True,
        ):
            versions[(tenant, id_)].append(_Version(started, emitted, row))
        for key, version in await self._stored(set(versions)):
            versions[key].append(version)

        emitted_ms = pc.cast(rows.column("emitted_at"), pa.int64()).to_pylist()
        superseded = [0] * rows.num_rows
        tombstones: list[tuple[int, int]] = []  # (the newest version's row, the stored time)
        for found in versions.values():
            if len({v.time_ms for v in found}) == 1:
                continue
            # max() keeps the first of equal ones: the stored version, then batch order.
            newest = max(sorted(found, key=lambda v: v.row is not None), key=lambda v: v.emitted_ms)
            for v in found:
                if v.time_ms == newest.time_ms:
                    continue
                if v.row is not None:
                    superseded[v.row] = 1
                    emitted_ms[v.row] = newest.emitted_ms
                elif newest.row is not None:
                    tombstones.append((newest.row, v.time_ms))
        if not any(superseded) and not tombstones:
            return rows
        at = rows.schema.get_field_index("emitted_at")
        out = rows.set_column(
            at, rows.schema.field(at), pa.array(emitted_ms, pa.int64()).cast(rows.schema.field(at).type)
        )
        out = out.append_column("superseded", pa.array(superseded, pa.uint8()))
        if tombstones:
            shadows = out.take([row for row, _ in tombstones])
            time_field = shadows.schema.field("time_started")
            moved = pa.array([ms for _, ms in tombstones], pa.int64()).cast(time_field.type)
            shadows = shadows.set_column(shadows.schema.get_field_index("time_started"), time_field, moved)
            marked = pa.array([1] * len(tombstones), pa.uint8())
            shadows = shadows.set_column(shadows.schema.get_field_index("superseded"), "superseded", marked)
            out = pa.concat_tables([out, shadows])
        return out

    async def _stored(self, keys: set[tuple[str, str]]) -> list[tuple[tuple[str, str], _Version]]:
        """The newest live version stored of each key (the key table may still hold older
        ones until it merges; any tenant's rows of an id come back, ours are kept)."""
        ids = sorted({uuid.UUID(id_) for _, id_ in keys})
        found = []
        for start in range(0, len(ids), _LOOKUP_IDS):
            chunk = ids[start : start + _LOOKUP_IDS]
            found += await self._store.query(_STORED.format(table=self._keys), {"ids": chunk}, writer=True)
        newest: dict[tuple[str, str], _Version] = {}
        for tenant, id_, time_ms, emitted_ms in found:
            key = (str(tenant), str(id_))
            if key in keys and (key not in newest or int(emitted_ms) > newest[key].emitted_ms):
                newest[key] = _Version(int(time_ms), int(emitted_ms), None)
        return list(newest.items())


def _candidates(rows: pa.Table, grace_ms: int) -> pa.ChunkedArray | None:
    """Which rows belong to a call that may need resolving (the module's docstring): a
    version outside the grace band after its call's end, or versions of one call at
    several start times in the batch; every row of such a call. None for a batch with
    none, the common one, found without a Python object per row."""
    emitted = pc.cast(rows.column("emitted_at"), pa.int64())
    lag = pc.subtract(emitted, pc.cast(rows.column("time_ended"), pa.int64()))
    late = pc.or_(pc.less(lag, 0), pc.greater(lag, grace_ms))
    # (pc.unique: count_distinct measured ~4x slower on 20,000 strings, pyarrow 26)
    repeated = len(pc.unique(rows.column("id"))) < rows.num_rows
    if not repeated and not pc.any(late).as_py():
        return None
    # A call's key as one string: a UUID holds no "/", so the split is unambiguous.
    calls = pc.binary_join_element_wise(rows.column("id"), rows.column("tenant_id"), "/")
    keys = pc.filter(calls, late).chunks
    if repeated:
        starts = pa.table({"call": calls, "started": rows.column("time_started")})
        per_call = starts.group_by("call").aggregate([("started", "count_distinct")])
        keys += per_call.filter(pc.greater(per_call["started_count_distinct"], 1))["call"].chunks
    wanted = pa.chunked_array(keys, calls.type)
    if len(wanted) == 0:
        return None
    return pc.is_in(calls, value_set=wanted.combine_chunks())
