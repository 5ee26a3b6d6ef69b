"""The seam between the service and ClickHouse: clickhouse-connect, either transport.

One setting picks the transport (``ClickHouseSettings.clickhouse_dsn``): ``http(s)://`` reaches a
ClickHouse server or cluster, ``chdb:///dir`` runs the embedded engine (chdb) in this
process. Everything else is the same code: the same client calls, the same
server-side ``{name:Type}`` parameter binding, the same Arrow inserts and the same
Native result decoding.

Concurrency: every call runs on a worker thread that owns a client of its own, so a
client is never used by two threads at once (one embedded handle shared by threads
races on query parameters: a tenant leak). Reads and writes have separate workers,
so a read never queues behind a batch parse or insert.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import queue
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from clickhouse_connect.driver.exceptions import ClickHouseError

from cdr.settings import ClickHouseSettings, SettingsError
from cdr.store.errors import StoreError, StoreUnavailable, classify

if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client

Param = (
    str
    | int
    | float
    | datetime
    | uuid.UUID
    | Sequence[str]
    | Sequence[int]
    | Sequence[uuid.UUID]
    | Sequence[tuple[datetime, uuid.UUID]]
    | None
)
Row = list[Any]
T = TypeVar("T")

# Arrow results with String columns as Arrow strings, set once per client: as a
# per-call setting the embedded transport would apply and restore it with SET
# statements around every query.
_CLIENT_SETTINGS = {"output_format_arrow_string_as_string": 1}
# A streamed result is handed over in pieces of at most this size.
_STREAM_READ_BYTES = 1 << 20
# ASYNC: the kill is asked for, not waited on; the read's own worker then ends.
_KILL = "KILL QUERY {on_cluster}WHERE query_id = {{query_id:String}} ASYNC"


def kill_statement(cluster: str | None) -> str:
    """KILL QUERY for a read of ours. Behind a load balancer the kill reaches any replica,
    not necessarily the one running the read: on a cluster it goes to every host."""
    return _KILL.format(on_cluster=f"ON CLUSTER {cluster} " if cluster else "")


def replica_lag_filter(database: str, max_delay_s: int, replicas: str = "system.replicas") -> str:
    """A filter for ``additional_table_filters`` on the CDR table: a read answered by a
    replica more than ``max_delay_s`` behind (``system.replicas.absolute_delay``, what it
    has not yet fetched) fails with FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a 503 with
    Retry-After) instead of answering without recent inserts. A scalar subquery is
    computed before the read, so it fails even when no row matches: an empty last page of
    a scroll is exactly how a lagging replica would skip records for good. It runs on the
    replica that runs the read, in the same request, which a separate check behind a
    load balancer would not. ``replicas``: the table to read delays from (tests)."""
    quoted = "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return (
        f"(SELECT throwIf(max(absolute_delay) > {int(max_delay_s)}, "
        f"'this ClickHouse replica is more than {int(max_delay_s)} s behind its peers')"
        f" FROM {replicas} WHERE database = {quoted}) = 0"
    )


@dataclass(frozen=True)
class ServerTls:
    """How an ``https://`` server is verified, and the client certificate we show it."""

    ca_file: str | None = None  # None: the system's CAs (certifi's bundle in clickhouse-connect)
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None

    def client_options(self) -> dict[str, Any]:
        return {
            "verify": self.verify,
            "ca_cert": self.ca_file,
            "client_cert": self.cert_file,
            "client_cert_key": self.key_file,
        }


EMBEDDED_MISSING = (
    "the embedded engine is not installed: set CDR_CLICKHOUSE_URL or install the 'embedded' extra"
    " (pip install 'cdr-service[embedded]'; `make setup` does)"
)


def require_embedded_engine() -> None:
    """SettingsError unless the embedded engine (chdb, the ``embedded`` extra) can be loaded:
    the production image leaves it out, so a pod without CDR_CLICKHOUSE_URL is told so at once."""
    if importlib.util.find_spec("chdb") is None:
        setting = ClickHouseSettings.env("clickhouse_url")
        raise SettingsError(
            f"{setting}: {EMBEDDED_MISSING}", [{"setting": setting, "value": "(unset)", "error": EMBEDDED_MISSING}]
        )


def connect(
    dsn: str,
    password: str | None,
    settings: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    tls: ServerTls | None = None,
    uncompressed_cache_bytes: int = 0,
) -> Client:
    """A new clickhouse-connect client for ``chdb:///dir`` or ``http(s)://[user@]host[:port]``.
    ``settings`` apply to every query of the client; ``timeout_s`` bounds the HTTP wait;
    ``uncompressed_cache_bytes``: the embedded engine's cache of decompressed blocks (a
    server's is its own configuration). chdb runs one engine per process, started by the
    first client that opens it: a later client's value is ignored (without an error) while
    the engine runs, so every store a process opens passes the same setting (``open_store``)."""
    import clickhouse_connect

    parts = urlsplit(dsn)
    tls_options = (tls or ServerTls()).client_options() if parts.scheme == "https" else {}
    every = {**_CLIENT_SETTINGS, **(settings or {})}
    try:
        if parts.scheme == "chdb":
            require_embedded_engine()
            engine = {"uncompressed_cache_size": uncompressed_cache_bytes} if uncompressed_cache_bytes else None
            return clickhouse_connect.get_client(dsn=dsn, settings=every, chdb_options=engine)
        return clickhouse_connect.get_client(
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            secure=parts.scheme == "https",
            username=parts.username or "default",
            password=password or "",
            # Sessions would tie a client to one server-side state; nothing here needs one.
            autogenerate_session_id=False,
            settings=every,
            send_receive_timeout=math.ceil(timeout_s) if timeout_s is not None else 300,
            **tls_options,
        )
    except ClickHouseError as exc:
        where = parts.path if parts.scheme == "chdb" else f"{parts.hostname}:{parts.port or ''}"
        _raise_for_tls(exc, where, tls or ServerTls())
        raise StoreUnavailable(f"cannot open ClickHouse at {parts.scheme}://{where}: {exc}") from exc


def _raise_for_tls(exc: ClickHouseError, where: str, tls: ServerTls) -> None:
    """A certificate that does not verify is configuration, not an outage: no retrying."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        trusted = tls.ca_file or "the system CA store"
        raise SettingsError(
            f"{ClickHouseSettings.env('clickhouse_ca_file')}: the certificate of {where} is not trusted by {trusted}"
            " (or does not name that host)"
        ) from exc


@dataclass(frozen=True)
class ReadBudget:
    """What one read may cost, enforced by ClickHouse on every read (API and readiness):
    past it the query is stopped and the API answers 503 ``query_budget_exceeded``."""

    seconds: float = 10.0
    max_rows_to_read: int = 0  # 0: no limit
    max_memory_bytes: int = 0

    def settings(self) -> dict[str, Any]:
        limits: dict[str, Any] = {
            "max_execution_time": self.seconds,
            # Reads only, settings may still be given per query (readonly=1 would refuse them).
            "readonly": 2,
        }
        if self.max_rows_to_read:
            limits["max_rows_to_read"] = self.max_rows_to_read
        if self.max_memory_bytes:
            limits["max_memory_usage"] = self.max_memory_bytes
        return limits


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _Lane:
    """Worker threads, each with a clickhouse-connect client of its own (made on its first
    call, closed by the thread as it ends).

    Daemon threads, not a ThreadPoolExecutor: the interpreter joins an executor's threads
    at exit, so an insert hung on a server that never answers would hold a stopped process
    for the whole HTTP timeout (300 s). A call still running when ``close`` gives up is
    left to end on its own, or with the process."""

    def __init__(self, name: str, workers: int, make_client: Callable[[], Client]) -> None:
        self._make_client = make_client
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()  # None: a thread's end
        self._threads = [
            threading.Thread(target=self._serve, name=f"clickhouse-{name}-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        client: Client | None = None
        try:
            while (call := self._calls.get()) is not None:
                future, fn, args = call
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled before it started: never runs
                try:
                    if client is None:
                        client = self._make_client()
                    result = fn(client, *args)
                except (ClickHouseError, OSError) as exc:
                    future.set_exception(classify(exc))
                except BaseException as exc:  # handed to the caller, whatever it is
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            if client is not None:
                client.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, fn, args))
        return future

    def close(self, deadline: float) -> None:
        """End every thread once the calls queued before are done, waiting for them until
        ``deadline`` (monotonic); a call still running then is abandoned, its thread ends
        (and closes its client) when the call does."""
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


def _rows(client: Client, sql: str, params: dict[str, Param], query_id: str) -> list[Row]:
    # The query id is a transport setting: a server takes it, the embedded engine drops it.
    return [list(row) for row in client.query(sql, parameters=params, settings={"query_id": query_id}).result_rows]


def _stream(client: Client, sql: str, params: dict[str, Param], fmt: str, deliver: Callable[[bytes], bool]) -> None:
    """Hand a formatted result to ``deliver`` as it is read, ``_STREAM_READ_BYTES`` at a
    time, until it ends or ``deliver`` says the reader is gone (closing the stream ends the
    query: a server's HTTP response is dropped, the embedded engine's stream is closed)."""
    with client.raw_stream(sql, parameters=params, fmt=fmt) as stream:
        while chunk := stream.read(_STREAM_READ_BYTES):
            if not deliver(chunk):
                return


def _command(client: Client, sql: str, params: dict[str, Param]) -> None:
    client.command(sql, parameters=params)


# An insert into ``cdr`` feeds five materialized views (the key tables, the change feed, the
# versions); one after another they kept the insert's thread busy for most of an ingest's
# wall time while a core sat idle. In parallel: bench/ingest.py steady 66k -> 75k events/s
# (five interleaved pairs, bench/RESULTS.md, session 17). So the change feed's table and the
# versions table may each become visible first; the feed's reads take either order
# (``cdr.store.feed_hub.read_settled``).
_INSERT_SETTINGS = {"parallel_view_processing": 1}


def _insert_arrow(client: Client, table: str, database: str, data: pa.Table) -> None:
    client.insert_arrow(table, data, database=database, settings=_INSERT_SETTINGS)


class Store:
    """Async access to one ClickHouse database over either transport."""

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        tls: ServerTls | None = None,
        database: str,
        cluster: str | None = None,
        read_workers: int = 8,
        write_workers: int = 2,
        bulk_workers: int = 2,
        read_budget: ReadBudget | None = None,
        max_replica_delay_s: int | None = None,
        uncompressed_cache_bytes: int = 0,
    ) -> None:
        self.database = database
        self.cluster = cluster
        self._kill_sql = kill_statement(cluster)
        scheme = urlsplit(dsn).scheme
        if scheme not in ("chdb", "http", "https"):
            raise StoreError(
                f"{ClickHouseSettings.env('clickhouse_url')} must be chdb:///dir or http(s)://host[:port], not {scheme}://"
            )
        self.dsn = dsn

        def make_client() -> Client:
            return connect(dsn, password, tls=tls, uncompressed_cache_bytes=uncompressed_cache_bytes)

        budget = read_budget or ReadBudget()

        # On a cluster: how far a replica may be behind (None: one server, never behind).
        # The change feed reads only rows at least this old there (cdr.store.feed).
        self.max_replica_delay_s = max_replica_delay_s
        read_settings = budget.settings()
        if max_replica_delay_s is not None:
            lag = replica_lag_filter(database, max_replica_delay_s)
            read_settings["additional_table_filters"] = {self.qualified(t): lag for t in ("cdr", "cdr_changes")}

        def make_read_client() -> Client:
            return connect(
                dsn,
                password,
                read_settings,
                timeout_s=budget.seconds + 1,
                tls=tls,
                uncompressed_cache_bytes=uncompressed_cache_bytes,
            )

        self._reads = _Lane("read", read_workers, make_read_client)
        self._writes = _Lane("write", write_workers, make_client)
        # Bulk reads (exports) on a few workers of their own: at most this many in the
        # engine at once, and its working memory (allocator arenas included: they are
        # per thread) kept by these threads, not spread over every reader.
        self._bulk = _Lane("bulk", bulk_workers, make_read_client)
        # Readiness has a worker of its own: a pool full of slow reads must not fail the probe.
        self._health = _Lane("health", 1, make_read_client)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")

    async def query(
        self,
        sql: str,
        params: Mapping[str, Param] | None = None,
        *,
        health: bool = False,
        writer: bool = False,
        bulk: bool = False,
    ) -> list[Row]:
        """Rows of a SELECT, on a read worker (``health``: on the health check's own worker;
        ``writer``: on a write worker, for the ingestor's reads before an insert, which
        neither take an API reader nor count against the API's read budget; ``bulk``: on a
        bulk worker, an export's, with ``stream_formatted``).

        Cancelled (its client went away), a read that has not started never runs; one
        that has is killed on a server and waited for, so the caller's slot stays taken
        while the engine still works. The embedded engine cannot stop a query (chdb has no
        cancel; its reads end at the read budget's time limit)."""
        self._check_open()
        query_id = uuid.uuid4().hex
        lane = self._health if health else self._writes if writer else self._bulk if bulk else self._reads
        work = lane.submit(_rows, sql, dict(params or {}), query_id)
        return await self._outcome(work, query_id, wait_if_cancelled=not health)

    async def stream_formatted(self, sql: str, params: Mapping[str, Param], fmt: str) -> AsyncGenerator[bytes, None]:
        """A SELECT's result as ClickHouse formats it, in pieces as it is read (on a bulk
        worker): the engine never materialises it, nor is it copied whole into Python.

        The worker reads at the engine's pace, not the caller's: a slow caller holds the
        pieces it has not taken (so callers bound the size of what they stream), but never
        a shared reader, and the read ends within its time budget whatever the caller
        does. A caller that stops early (closes the iterator, or is cancelled) stops the
        read at the next piece. So the bulk workers bound the streamed reads in the engine
        at once, not the callers still taking their pieces: a read waits for a worker only
        while others are being read."""
        self._check_open()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[bytes] = asyncio.Queue()  # b"": the end (the worker's error follows)
        gone = threading.Event()

        def hand_over(piece: bytes) -> bool:
            with suppress(RuntimeError):  # the loop already closed: nobody reads any more
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            return not gone.is_set()

        def produce(client: Client) -> None:
            try:
                _stream(client, sql, dict(params), fmt, hand_over)
            finally:
                hand_over(b"")

        work = self._bulk.submit(produce)
        try:
            while piece := await pieces.get():
                yield piece
            await asyncio.wrap_future(work)  # the read's error, if it failed
        finally:
            if not work.done():
                gone.set()
                work.cancel()  # not started yet: never runs

    async def _outcome(self, work: Future[T], query_id: str, *, wait_if_cancelled: bool) -> T:
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # A health check gives up on its own time limit: it must not wait on a stuck engine.
            if not work.cancel() and wait_if_cancelled:
                await self._kill(query_id, work)
            raise

    async def _kill(self, query_id: str, work: Future[Any]) -> None:
        with suppress(StoreError):
            await self._writes.run(_command, self._kill_sql, {"query_id": query_id})
        with suppress(StoreError):
            await asyncio.wrap_future(work)

    async def command(self, sql: str, params: Mapping[str, Param] | None = None) -> None:
        """A statement that returns nothing: DDL, INSERT ... SELECT (on a write worker)."""
        self._check_open()
        await self._writes.run(_command, sql, dict(params or {}))

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table whose column names match the table's (on a write worker)."""
        self._check_open()
        await self._writes.run(_insert_arrow, table, self.database, data)

    async def ping(self) -> bool:
        try:
            rows = await self.query("SELECT 1", health=True)
        except StoreError:
            return False
        return rows == [[1]]

    async def close(self, wait_s: float = 2.0) -> None:
        """Close every worker's client once its calls in progress are done, waiting for them
        up to ``wait_s``: a stop must not wait out a server that does not answer (an insert
        waits up to its HTTP timeout, 300 s). A call abandoned then is one whose caller has
        given up (an uncommitted batch, read again after restart)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + wait_s
        for lane in (self._reads, self._writes, self._bulk, self._health):
            await asyncio.to_thread(lane.close, deadline)

    def qualified(self, table: str) -> str:
        return f"{self.database}.{table}"


def open_store(clickhouse: ClickHouseSettings) -> Store:
    """The store the settings ask for (``CDR_CLICKHOUSE_URL``, else chdb in ``CDR_DATA_DIR``)."""
    dsn = clickhouse.clickhouse_dsn
    if clickhouse.embedded:
        require_embedded_engine()
        path = urlsplit(dsn).path
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            setting = clickhouse.env("clickhouse_url" if clickhouse.clickhouse_url else "data_dir")
            raise SettingsError(
                f"{setting}: cannot use {path} as the embedded store folder: {exc.strerror or exc}",
                [{"setting": setting, "value": path, "error": f"cannot create the folder: {exc.strerror or exc}"}],
            ) from exc
    password = clickhouse.clickhouse_password.get_secret_value() if clickhouse.clickhouse_password else None
    return Store(
        dsn,
        password=password,
        tls=ServerTls(
            ca_file=_path(clickhouse.clickhouse_ca_file),
            verify=clickhouse.clickhouse_verify,
            cert_file=_path(clickhouse.clickhouse_client_cert_file),
            key_file=_path(clickhouse.clickhouse_client_key_file),
        ),
        database=clickhouse.clickhouse_database,
        cluster=clickhouse.clickhouse_cluster,
        read_workers=clickhouse.clickhouse_pool_size,
        write_workers=clickhouse.clickhouse_write_pool_size,
        bulk_workers=clickhouse.export_readers,
        read_budget=ReadBudget(
            seconds=clickhouse.query_timeout_ms / 1000,
            max_rows_to_read=clickhouse.query_max_rows_to_read,
            max_memory_bytes=clickhouse.query_max_memory_bytes,
        ),
        # Replicas exist only in cluster mode; one server is never behind itself.
        max_replica_delay_s=clickhouse.clickhouse_max_replica_delay_s if clickhouse.clickhouse_cluster else None,
        uncompressed_cache_bytes=clickhouse.clickhouse_uncompressed_cache_mb << 20,
    )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
