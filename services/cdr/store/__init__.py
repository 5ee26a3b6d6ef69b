"""ClickHouse access: one SQL and one client library (clickhouse-connect), over HTTP
to a server or in-process to the embedded engine (chdb)."""

from cdr.store.client import Param, Store, open_store
from cdr.store.errors import StoreError, StoreUnavailable

__all__ = ["Param", "Store", "StoreError", "StoreUnavailable", "open_store"]
