"""Webhook state in ClickHouse (migration 0006): SQL text, parameters and rows. Pure: no I/O.

``webhook_state`` is written by `cdr notify` only, ``webhook_replays`` by the API only:
each table has one writer, so neither overwrites what the other wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from cdr.store.client import Param
from cdr.store.feed import Offsets
from cdr.store.queries import Query

STATE_TABLE = "webhook_state"
REPLAYS_TABLE = "webhook_replays"
ERROR_EXCERPT = 200  # characters of a failure kept and shown


@dataclass
class EndpointState:
    """One endpoint's delivery state, as stored."""

    tenant_id: str
    endpoint: str
    position: Offsets
    replay_generation: int = 0
    last_success_at: datetime | None = None
    last_error_at: datetime | None = None
    last_error: str = ""
    last_status: int = 0
    failing_since: datetime | None = None
    disabled_reason: str = ""
    lag_s: float = 0.0
    updated_at: datetime | None = None


_COLUMNS = tuple(f.name for f in fields(EndpointState))
_ARROW = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("endpoint", pa.string()),
        ("position", pa.string()),
        ("replay_generation", pa.uint64()),
        ("last_success_at", pa.timestamp("ms", tz="UTC")),
        ("last_error_at", pa.timestamp("ms", tz="UTC")),
        ("last_error", pa.string()),
        ("last_status", pa.uint16()),
        ("failing_since", pa.timestamp("ms", tz="UTC")),
        ("disabled_reason", pa.string()),
        ("lag_s", pa.float64()),
        ("updated_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def position_text(position: Mapping[int, int]) -> str:
    return orjson.dumps({str(p): o for p, o in sorted(position.items())}).decode()


def position_of(text: str) -> Offsets:
    return {int(p): int(o) for p, o in orjson.loads(text or "{}").items()}


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    moment: datetime = value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def state_read(table: str, tenant: str | None = None) -> Query:
    """Every endpoint's newest state (``tenant``: that tenant's only)."""
    columns = ", ".join(_COLUMNS)
    if tenant is None:
        return Query(f"SELECT {columns} FROM {table} FINAL", {})
    return Query(f"SELECT {columns} FROM {table} FINAL WHERE tenant_id = {{tenant:String}}", {"tenant": tenant})


def states_of(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, str], EndpointState]:
    found: dict[tuple[str, str], EndpointState] = {}
    for row in rows:
        values = dict(zip(_COLUMNS, row, strict=True))
        state = EndpointState(
            tenant_id=str(values["tenant_id"]),
            endpoint=str(values["endpoint"]),
            position=position_of(str(values["position"])),
            replay_generation=int(values["replay_generation"]),
            last_success_at=_utc(values["last_success_at"]),
            last_error_at=_utc(values["last_error_at"]),
            last_error=str(values["last_error"]),
            last_status=int(values["last_status"]),
            failing_since=_utc(values["failing_since"]),
            disabled_reason=str(values["disabled_reason"]),
            lag_s=float(values["lag_s"]),
            updated_at=_utc(values["updated_at"]),
        )
        found[(state.tenant_id, state.endpoint)] = state
    return found


def state_rows(states: Sequence[EndpointState]) -> pa.Table:
    """``states`` as the rows to insert (their ``updated_at`` set by the caller)."""
    columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    for state in states:
        for name in _COLUMNS:
            value = getattr(state, name)
            columns[name].append(position_text(value) if name == "position" else value)
    return pa.Table.from_pydict(columns, schema=_ARROW)


@dataclass(frozen=True)
class Replay:
    """A request to deliver an endpoint's changes again from ``position``."""

    tenant_id: str
    endpoint: str
    generation: int
    position: Offsets


def replays_read(table: str) -> Query:
    return Query(f"SELECT tenant_id, endpoint, generation, position FROM {table} FINAL", {})


def replays_of(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, str], Replay]:
    return {(str(t), str(e)): Replay(str(t), str(e), int(g), position_of(str(p))) for t, e, g, p in rows}


def replay_insert(table: str, replay: Replay, since: datetime, requested_at: datetime) -> Query:
    params: dict[str, Param] = {
        "tenant": replay.tenant_id,
        "endpoint": replay.endpoint,
        "generation": replay.generation,
        "position": position_text(replay.position),
        "since": since,
        "at": requested_at,
    }
    return Query(
        f"INSERT INTO {table} (tenant_id, endpoint, generation, position, since, requested_at)"
        " SELECT {tenant:String}, {endpoint:String}, {generation:UInt64}, {position:String},"
        " {since:DateTime64(3, 'UTC')}, {at:DateTime64(3, 'UTC')}",
        params,
    )
