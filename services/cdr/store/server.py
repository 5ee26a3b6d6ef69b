"""A ClickHouse server or cluster, over HTTP with clickhouse-connect."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cdr.store.base import Param, Row, Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client


class ServerStore(Store):
    """clickhouse-connect with server-side ``{name:Type}`` binding."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        database: str,
        cluster: str | None,
        workers: int = 8,
    ) -> None:
        super().__init__(database, cluster=cluster, workers=workers)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"CDR_CLICKHOUSE_URL must be http(s)://[user@]host[:port], not {url!r}")
        self._connect_args: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port or (8443 if parts.scheme == "https" else 8123),
            "secure": parts.scheme == "https",
            "username": parts.username or "default",
            "password": password if password is not None else (parts.password or ""),
            # The client is shared by several worker threads: no HTTP session state.
            "autogenerate_session_id": False,
        }
        self._client: Client | None = None

    def _connected(self) -> Client:
        if self._client is None:
            import clickhouse_connect

            try:
                self._client = clickhouse_connect.get_client(**self._connect_args)
            except Exception as exc:
                raise StoreUnavailable(f"cannot connect to ClickHouse: {exc}") from exc
        return self._client

    def _query(self, sql: str, params: dict[str, Param]) -> list[Row]:
        try:
            result = self._connected().query(sql, parameters=params)
        except Exception as exc:
            raise _classify(exc) from exc
        return [list(row) for row in result.result_rows]

    def _command(self, sql: str, params: dict[str, Param]) -> None:
        try:
            self._connected().command(sql, parameters=params)
        except Exception as exc:
            raise _classify(exc) from exc

    def _insert_arrow(self, table: str, data: pa.Table) -> None:
        try:
            self._connected().insert_arrow(table, data, database=self.database)
        except Exception as exc:
            raise _classify(exc) from exc

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _classify(exc: Exception) -> StoreError:
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, OperationalError):
        return StoreUnavailable(str(exc))
    if isinstance(exc, DatabaseError) and any(
        code in str(exc) for code in ("UNKNOWN_TABLE", "TABLE_IS_READ_ONLY", "TOO_MANY_PARTS", "NOT_ENOUGH_SPACE")
    ):
        return StoreUnavailable(str(exc))
    return StoreError(str(exc))
