"""The embedded ClickHouse engine (chdb), persisting to a local folder.

Only one process may own the folder, and every call goes through the store's single
worker thread: chdb's query parameters are not safe across threads, and a query
running with another request's parameters would leak one tenant's data to another.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from cdr.store.base import Param, Row, Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    import pyarrow as pa

# ClickHouse reads parameter values in its escaped text format.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def format_param(value: Param) -> str:
    """Render a value as the text ClickHouse parses for a ``{name:Type}`` parameter."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    # An array of strings: a ClickHouse literal, each element quoted and escaped.
    items = ",".join("'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'" for item in value)
    return f"[{items}]"


class EmbeddedStore(Store):
    """chdb in this process; the same SQL as a server."""

    def __init__(self, data_dir: Path, database: str) -> None:
        super().__init__(database, cluster=None, workers=1)
        from chdb.session import Session

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        try:
            # chdb has no type hints; its session is used through the few calls below.
            self._session: Any = Session(str(data_dir))  # type: ignore[no-untyped-call]
        except Exception as exc:  # chdb raises plain RuntimeError/Exception types
            raise StoreUnavailable(f"cannot open embedded store in {data_dir}: {exc}") from exc

    def _session_or_raise(self) -> Any:
        if self._session is None:
            raise StoreUnavailable("embedded store is closed")
        return self._session

    def _execute(self, sql: str, params: dict[str, Param], fmt: str, arrow_input: pa.Table | None = None) -> bytes:
        """Run one statement; ``arrow_input`` is what its ``Python(arrow_input)`` reads
        (chdb's table function finds a table by the name of a local variable in the
        frame that calls it, and a parameter is such a local)."""
        session = self._session_or_raise()
        try:
            result = session.query(sql, fmt, params={k: format_param(v) for k, v in params.items()})
        except Exception as exc:
            raise _classify(exc) from exc
        out: bytes = result.bytes()
        return out

    def _query(self, sql: str, params: dict[str, Param]) -> list[Row]:
        out = self._execute(sql, params, "JSONCompactEachRow")
        return [orjson.loads(line) for line in out.splitlines() if line]

    def _command(self, sql: str, params: dict[str, Param]) -> None:
        self._execute(sql, params, "CSV")

    def _insert_arrow(self, table: str, data: pa.Table) -> None:
        columns = ", ".join(data.column_names)
        sql = f"INSERT INTO {self.qualified(table)} ({columns}) SELECT {columns} FROM Python(arrow_input)"
        self._execute(sql, {}, "CSV", data)

    selects_over_arrow = True

    def _select_arrow(self, sql: str, data: pa.Table, params: dict[str, Param]) -> pa.Table:
        import pyarrow as pa

        result = self._execute(sql, params, "Arrow", data)
        with pa.ipc.open_file(pa.py_buffer(result)) as reader:
            return reader.read_all()

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _classify(exc: Exception) -> StoreError:
    text = str(exc)
    # A missing or detached table, a full disk or a read-only folder pass; bad SQL does not.
    transient = ("UNKNOWN_TABLE", "NOT_ENOUGH_SPACE", "TABLE_IS_READ_ONLY", "CANNOT_WRITE", "TIMEOUT")
    if any(code in text for code in transient):
        return StoreUnavailable(text)
    return StoreError(text)
