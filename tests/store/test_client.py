"""The store on clickhouse-connect's embedded (chdb) transport: parameter binding,
result decoding, error classification, the client pool's isolation and parallelism.

Everything runs against the real engine; the HTTP variants need a ClickHouse server
(testcontainers where a Docker engine answers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID

import pyarrow as pa
import pytest

from cdr.ingest.processor import to_table
from cdr.ingest.processor import validate as validate_event
from cdr.model.event import CallEnded
from cdr.store import Store, StoreError, StoreUnavailable
from cdr.store.client import connect
from cdr.store.errors import Code, SchemaMissing
from cdr.store.migrations import migrate
from tests.helpers import encoded, events

TENANTS = [f"tenant{n}.example" for n in range(8)]
SYNTAX_ERROR = 62  # a ClickHouse code the service has no reason to name


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('store')}", database="cdr", read_workers=8, write_workers=2)
    await migrate(store)
    parsed = [validate_event(value, UTC) for _, value in encoded(events(800, seed=5, tenants=tuple(TENANTS)))]
    await store.insert_arrow("cdr", to_table([p for p in parsed if isinstance(p, CallEnded)]))
    yield store
    await store.close()


async def test_parameters_bind_and_results_decode(store: Store) -> None:
    moment = datetime(2024, 2, 29, 23, 59, 58, 987_000, tzinfo=UTC)
    rows = await store.query(
        "SELECT toString({t:DateTime64(3, 'UTC')}), {t:DateTime64(3, 'UTC')}, {u:UUID}, {s:String},"
        " {a:Array(String)}, {n:Nullable(UInt32)}, {i:UInt64}",
        {
            "t": moment,
            "u": UUID("0b1f4a52-6a4e-4d4c-9a38-2f5c1c1e9d11"),
            "s": "it's a \\ tab\there\nnewline",
            "a": ["o'neil", "back\\slash"],
            "n": None,
            "i": 2**63,
        },
    )
    text, decoded, uuid_, s, a, n, i = rows[0]
    assert text == "2024-02-29 23:59:58.987"
    assert decoded.replace(tzinfo=UTC) == moment
    assert uuid_ == UUID("0b1f4a52-6a4e-4d4c-9a38-2f5c1c1e9d11")
    assert s == "it's a \\ tab\there\nnewline"
    assert a == ["o'neil", "back\\slash"]
    assert n is None and i == 2**63


def test_a_datetime_binds_as_utc_whatever_the_servers_timezone(store: Store) -> None:
    """clickhouse-connect converts aware datetimes to the server's timezone for untyped
    parameters; ours are typed DateTime64(3, 'UTC') and must arrive unshifted, with
    their milliseconds, on a server that runs in another zone."""
    from zoneinfo import ZoneInfo

    client = connect(store.dsn, None)
    try:
        client.server_tz = ZoneInfo("Asia/Ho_Chi_Minh")
        moment = datetime(2024, 7, 1, 0, 0, 0, 5_000, tzinfo=UTC)
        rows = client.query("SELECT toString({t:DateTime64(3, 'UTC')})", parameters={"t": moment}).result_rows
    finally:
        client.close()
    assert rows == [("2024-07-01 00:00:00.005",)]


async def test_errors_are_classified_by_code(store: Store) -> None:
    # A missing table is configuration (a replica without our tables), not an outage to retry.
    with pytest.raises(SchemaMissing) as missing:
        await store.query("SELECT count() FROM cdr.no_such_table")
    assert missing.value.code == Code.UNKNOWN_TABLE and not isinstance(missing.value, StoreUnavailable)
    assert "CDR_CLICKHOUSE_CLUSTER" in str(missing.value) and "{replica}" in str(missing.value)
    with pytest.raises(SchemaMissing) as no_database:
        await store.query("SELECT count() FROM no_such_database.cdr")
    assert no_database.value.code == Code.UNKNOWN_DATABASE
    with pytest.raises(StoreError) as bad:
        await store.query("SELEC 1")
    assert bad.value.code == SYNTAX_ERROR and not isinstance(bad.value, StoreUnavailable)
    wrong_columns = pa.table({"tenant_id": ["t"], "no_such_column": [1]})
    with pytest.raises(StoreError) as mismatch:
        await store.insert_arrow("cdr", wrong_columns)
    assert not isinstance(mismatch.value, StoreUnavailable)


async def test_an_unreachable_server_is_unavailable() -> None:
    """The HTTP transport, for real: nothing listens on port 1."""
    server = Store("http://127.0.0.1:1", database="cdr", read_workers=1, write_workers=1)
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
            await server.query("SELECT 1")
        assert not await server.ping()
    finally:
        await server.close()


async def test_a_bad_url_and_a_closed_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(StoreError, match="CDR_CLICKHOUSE_URL"):
        Store("ftp://x", database="cdr")
    closed = Store(f"chdb://{tmp_path_factory.mktemp('closed')}", database="cdr")
    await closed.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await closed.query("SELECT 1")


async def test_concurrent_tenants_through_the_pool_never_see_each_other(store: Store) -> None:
    """8 tenants x 150 parameterized queries at once over the 8 read clients: a client
    shared by two threads would answer some with another tenant's rows."""
    sql = (
        "SELECT tenant_id, toString(id) FROM cdr.cdr FINAL WHERE tenant_id = {tenant:String}"
        " AND duration >= {d:UInt32} ORDER BY time_started LIMIT 5"
    )
    wrong = 0
    answered = 0

    async def ask(tenant: str, k: int) -> None:
        nonlocal wrong, answered
        rows = await store.query(sql, {"tenant": tenant, "d": k % 3})
        answered += 1
        wrong += sum(row[0] != tenant for row in rows)

    await asyncio.gather(*(ask(TENANTS[k % 8], k) for k in range(1_200)))
    assert answered == 1_200 and wrong == 0


async def test_reads_run_in_parallel(store: Store) -> None:
    """Eight reads that each sleep 0.5 s in the engine, on eight read workers, run at once:
    every one has started in the engine before the first has finished (one after another,
    the second would start only after the first ended). No bound on the time taken, which
    a loaded machine stretches."""
    finished: list[int] = []

    async def read(k: int) -> int:
        rows = await store.query("SELECT toUnixTimestamp64Micro(now64(6)), sleep(0.5), {k:UInt8}", {"k": k})
        finished.append(time.time_ns() // 1000)  # the engine's clock: embedded, the same wall clock
        return int(rows[0][0])

    started = await asyncio.gather(*(read(k) for k in range(8)))
    assert max(started) < min(finished), (sorted(started), sorted(finished))


async def test_a_read_does_not_wait_for_a_running_insert(store: Store) -> None:
    """Both write workers busy with large inserts (~2 s each here); reads answer meanwhile."""
    big = _big_table(600_000)
    inserts = [asyncio.create_task(store.insert_arrow("cdr", big)) for _ in range(2)]
    await asyncio.sleep(0.2)  # let both inserts reach the engine
    reads = []
    while not all(task.done() for task in inserts):
        began = time.perf_counter()
        rows = await store.query("SELECT count() FROM cdr.cdr WHERE tenant_id = {t:String}", {"t": TENANTS[0]})
        reads.append((time.perf_counter() - began, any(not task.done() for task in inserts)))
        assert rows[0][0] > 0
    await asyncio.gather(*inserts)
    # Reads queued behind the inserts would all finish after them. (No bound on the
    # slowest read: two cores shared with two inserts make single outliers.)
    during = sorted(seconds for seconds, busy in reads if busy)
    assert len(during) >= 3, f"no read finished while the inserts ran: {reads}"
    assert during[len(during) // 2] < 0.1, during


def _big_table(rows: int) -> pa.Table:
    """A valid CDR table of ``rows`` rows (one tenant of its own), built by repetition."""
    parsed = [validate_event(value, UTC) for _, value in encoded(events(1_000, seed=9, tenants=("bulk.example",)))]
    one = to_table([p for p in parsed if isinstance(p, CallEnded)])
    return pa.concat_tables([one] * (rows // one.num_rows)).combine_chunks()


def test_an_embedded_folder_that_cannot_be_made_is_named(tmp_path_factory: pytest.TempPathFactory) -> None:
    from cdr.settings import SettingsError, load_settings
    from cdr.store import open_store

    occupied = tmp_path_factory.mktemp("occupied") / "a-file"
    occupied.write_text("not a folder")
    with pytest.raises(SettingsError, match=r"CDR_DATA_DIR: .*a-file") as info:
        open_store(load_settings(clickhouse_url=None, data_dir=occupied).clickhouse)
    assert info.value.problems[0]["setting"] == "CDR_DATA_DIR"


async def test_reads_run_within_their_budget(store: Store) -> None:
    from cdr.store.client import ReadBudget
    from cdr.store.errors import BUDGET

    # The engine holds one folder per process: a second store on the module's folder.
    store = Store(store.dsn, database="default", read_budget=ReadBudget(seconds=1.0, max_rows_to_read=1_000))
    try:
        assert await store.query("SELECT count() FROM numbers(100)") == [[100]]
        with pytest.raises(StoreError) as too_many:
            await store.query("SELECT count() FROM numbers(100000)")
        with pytest.raises(StoreError) as too_long:
            await store.query("SELECT sleepEachRow(0.5) FROM numbers(5) SETTINGS max_block_size = 1")
        with pytest.raises(StoreError, match="readonly"):
            await store.query("CREATE TABLE t (x Int8) ENGINE = Memory")
        await store.command("CREATE TABLE t (x Int8) ENGINE = Memory")  # writes keep their rights
        assert await store.ping()
    finally:
        await store.close()
    assert too_many.value.code in BUDGET and too_long.value.code in BUDGET


def test_errors_without_a_server_code() -> None:
    """Transport failures carry no ClickHouse code: a dropped connection or a full local
    disk is worth retrying, a client-side mistake is not."""
    from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

    from cdr.store.errors import classify

    assert isinstance(classify(OperationalError("connection reset")), StoreUnavailable)
    assert isinstance(classify(OSError(28, "No space left on device")), StoreUnavailable)
    wrong_use = classify(ProgrammingError("bad argument"))
    assert type(wrong_use) is StoreError and wrong_use.code is None


async def test_a_cancelled_read_waits_for_its_worker_and_the_store_goes_on(store: Store) -> None:
    """Cancelled while its query runs, a read asks the engine to kill it and waits for
    its worker, so whoever counted it as running still does until the engine is done.
    The embedded engine cannot stop a query: the wait is the query's whole time here
    (a server kills it by its query id)."""
    reading = asyncio.create_task(store.query("SELECT sleepEachRow(0.4) FROM numbers(3) SETTINGS max_block_size = 1"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert time.monotonic() - started > 0.5  # it waited for the running query (1.2 s in all)
    assert await store.query("SELECT 1") == [[1]]
