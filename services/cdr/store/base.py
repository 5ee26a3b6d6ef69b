"""The seam between the service and ClickHouse.

Two transports run the very same SQL: a ClickHouse server through clickhouse-connect
(production) and the embedded engine chdb (laptops, tests). Queries take ClickHouse
``{name:Type}`` parameters only; values are never formatted into SQL text.
Every method is async and runs the blocking call on the store's own worker threads.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pyarrow as pa

    from cdr.settings import Settings

Param = str | int | float | datetime | uuid.UUID | Sequence[str] | None
Row = list[Any]
T = TypeVar("T")


class StoreError(Exception):
    """A query or insert failed."""


class StoreUnavailable(StoreError):
    """ClickHouse cannot be reached or refused the operation; worth retrying later."""


class Store(ABC):
    """Async access to one ClickHouse database."""

    def __init__(self, database: str, cluster: str | None, workers: int) -> None:
        self.database = database
        self.cluster = cluster
        # The embedded engine must see one caller at a time (its parameters race
        # across threads), so its executor has a single worker.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def query(self, sql: str, params: Mapping[str, Param] | None = None) -> list[Row]:
        """Rows of a SELECT, as lists of plain JSON-like values."""
        return await self._run(self._query, sql, dict(params or {}))

    async def command(self, sql: str, params: Mapping[str, Param] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... VALUES, SYSTEM)."""
        await self._run(self._command, sql, dict(params or {}))

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table whose column names match the table's columns."""
        await self._run(self._insert_arrow, table, data)

    # Whether select_arrow works: a query over an Arrow table held by this process.
    selects_over_arrow = False

    async def select_arrow(self, sql: str, data: pa.Table, params: Mapping[str, Param] | None = None) -> pa.Table:
        """Run a SELECT that reads ``data`` as ``Python(arrow_input)``; its result as Arrow."""
        return await self._run(self._select_arrow, sql, data, dict(params or {}))

    def _select_arrow(self, sql: str, data: pa.Table, params: dict[str, Param]) -> pa.Table:
        raise NotImplementedError(f"{type(self).__name__} cannot query an in-process Arrow table")

    async def ping(self) -> bool:
        try:
            rows = await self.query("SELECT 1")
        except StoreError:
            return False
        return rows == [[1]]

    async def close(self) -> None:
        await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=True)

    def qualified(self, table: str) -> str:
        return f"{self.database}.{table}"

    @abstractmethod
    def _query(self, sql: str, params: dict[str, Param]) -> list[Row]: ...

    @abstractmethod
    def _command(self, sql: str, params: dict[str, Param]) -> None: ...

    @abstractmethod
    def _insert_arrow(self, table: str, data: pa.Table) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...


def open_store(settings: Settings) -> Store:
    """The store the settings ask for: a server when a URL is set, chdb otherwise."""
    if settings.clickhouse_url is None:
        from cdr.store.embedded import EmbeddedStore

        return EmbeddedStore(settings.data_dir, settings.clickhouse_database)
    from cdr.store.server import ServerStore

    password = settings.clickhouse_password.get_secret_value() if settings.clickhouse_password else None
    return ServerStore(
        settings.clickhouse_url,
        password=password,
        database=settings.clickhouse_database,
        cluster=settings.clickhouse_cluster,
    )
