"""ClickHouse access: one SQL, reached through a server (clickhouse-connect) or chdb."""

from cdr.store.base import Param, Store, StoreError, StoreUnavailable, open_store

__all__ = ["Param", "Store", "StoreError", "StoreUnavailable", "open_store"]
