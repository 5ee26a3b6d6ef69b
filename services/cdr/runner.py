"""Long-running processes: the API alone, or ingest + API in one process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp

from cdr.api.app import READY_TIMEOUT_S, api_ops_app, create_app
from cdr.ingest.app import Ingestor, build_ingestor
from cdr.metrics import Metrics, Role
from cdr.notify.notifier import Notifier
from cdr.ops import ops_routes
from cdr.serve import http_server
from cdr.settings import ApiSettings, Settings
from cdr.startup import masked_url, with_retries
from cdr.store import Store, StoreUnavailable, open_store
from cdr.store.feed_hub import FeedHub, feed_hub_for
from cdr.store.migrations import SchemaGate, migrate, wait_until_current

log = logging.getLogger(__name__)


async def run_api(settings: Settings) -> int:
    """Serve the API on CDR_API_PORT and its /healthz, /readyz, /metrics on CDR_OPS_PORT;
    the schema is migrated by `cdr migrate` (a Helm hook in production)."""
    metrics = Metrics(roles=("api",))
    store = open_store(settings.clickhouse)
    app = create_app(settings.api, settings.common, store, metrics, close_store=True, ops_routes_here=False)
    servers = [
        http_server(app, settings.api.api_host, settings.api.api_port, settings.api),
        http_server(api_ops_app(store, metrics), settings.api.api_host, settings.common.ops_port, settings.api),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = [asyncio.create_task(server.serve()) for server in servers]
    stopped = asyncio.create_task(stop.wait())
    # Until a signal, or either server stopping by itself (e.g. its port taken).
    await asyncio.wait({*serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*serving)
    return 0


async def run_all(settings: Settings) -> int:
    """Migrate, then ingest, serve the API and deliver webhooks from one process and one store.

    The embedded store can be owned by one process only, so this is how a laptop
    runs the whole service.
    """
    return await _ingest_and_serve(
        settings,
        lambda ingestor, store, metrics: create_app(
            settings.api,
            settings.common,
            store,
            metrics,
            extra_ready=ingestor.ready,
            feed_hub=_feed_hub_poked_by(ingestor, settings.api, store, metrics),
        ),
        settings.api.api_port,
        _migrate_for(settings),
        ("ingest", "api", "notify"),
        notify=True,
    )


async def run_ingest(settings: Settings) -> int:
    """The ingestor alone, with /healthz, /readyz and /metrics on CDR_OPS_PORT. It does not
    migrate (`cdr migrate`, the chart's Job, does): it waits for the schema to be current,
    and its /readyz says so meanwhile."""
    return await _ingest_and_serve(
        settings, _ingest_ops_app, settings.common.ops_port, schema_step(settings), ("ingest",)
    )


def schema_step(settings: Settings) -> Callable[[Store], Awaitable[object]]:
    """What `cdr ingest` does about the schema at start-up. On a server: wait for
    `cdr migrate` (several replicas must not race DDL, and need no DDL grants). An
    embedded store is owned by this one process, so nobody else could migrate it: it
    migrates, as `cdr run` does."""
    return _migrate_for(settings) if settings.clickhouse.embedded else wait_until_current


def _migrate_for(settings: Settings) -> Callable[[Store], Awaitable[object]]:
    """``migrate``, applying the change feed's retention of ``settings``."""
    return functools.partial(migrate, feed_retention_days=settings.api.feed_retention_days)


def _feed_hub_poked_by(ingestor: Ingestor, api: ApiSettings, store: Store, metrics: Metrics) -> FeedHub:
    """The API's change feed reads right after each batch the ingestor beside it stored."""
    hub = feed_hub_for(api, store, metrics)
    previous = ingestor.pipeline.on_stored
    if previous is None:
        ingestor.pipeline.on_stored = hub.poke
    else:  # the notifier's hub too

        def both() -> None:
            previous()
            hub.poke()

        ingestor.pipeline.on_stored = both
    return hub


def _ingest_ops_app(ingestor: Ingestor, store: Store, metrics: Metrics) -> Starlette:
    """/healthz, /readyz, /metrics of a standalone ingestor; /readyz names the missing
    migrations while start-up waits for them."""
    gate = SchemaGate(store)

    async def ready() -> tuple[bool, dict[str, str]]:
        if not gate.current:
            try:
                current, schema = await asyncio.wait_for(gate.check(), READY_TIMEOUT_S)
            except TimeoutError:
                current, schema = False, f"not checked yet: no answer within {READY_TIMEOUT_S:g} s"
            if not current:
                return False, {"schema": schema}
        return await ingestor.ready()

    return Starlette(routes=ops_routes(metrics, ready))


def _tune_interpreter() -> None:
    """Two interpreter settings for ingest, both measured (bench/RESULTS.md).

    Fewer garbage collections: aiokafka allocates a few objects per message and none
    form cycles, yet at the default gen-0 threshold (700) the collector took ~20 % of
    the event loop's time (py-spy). Start-up objects are frozen out of every later
    collection; cycles are still collected, in larger steps.

    A shorter GIL switch interval (0.5 ms, default 5 ms): the batch validation thread and
    the event loop (Kafka fetches, and the API in `cdr run`) take turns sooner. Chosen
    for the former ClickHouse-side parse (which re-took the GIL many times per batch:
    5x slower at 5 ms); with the lean path the two settings measured the same ingest
    rate within noise (31-39 k vs 37 k events/s, bench/RESULTS.md), so it stays for the
    loop's latency."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(0.0005)


async def _ingest_and_serve(
    settings: Settings,
    make_app: Callable[[Ingestor, Store, Metrics], ASGIApp],
    port: int,
    schema: Callable[[Store], Awaitable[object]],
    roles: tuple[Role, ...],
    *,
    notify: bool = False,
) -> int:
    _tune_interpreter()
    metrics = Metrics(roles=roles)
    store = open_store(settings.clickhouse)
    ingestor = build_ingestor(settings.kafka, settings.ingest, settings.common, store, metrics)
    notifier = (
        Notifier(settings.notify, settings.common, store, metrics, hub=feed_hub_for(settings.api, store, metrics))
        if notify
        else None
    )
    if notifier is not None:
        ingestor.pipeline.on_stored = notifier.hub.poke  # webhooks read right after each stored batch
    # Serving from the start: /healthz answers (and /readyz says "starting") while
    # start-up waits for Kafka or ClickHouse.
    server = http_server(make_app(ingestor, store, metrics), settings.api.api_host, port, settings.api)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ingestor.stopping.set)
    serving = asyncio.create_task(server.serve())
    try:
        if await _unless_stopped(ingestor.stopping, _start(settings, store, ingestor, schema)):
            log.info("serving", extra={"url": f"http://{settings.api.api_host}:{port}/"})
            notifying = None if notifier is None else asyncio.create_task(notifier.run(ingestor.stopping))
            # Until a signal, a halted pipeline, or the HTTP server stopping (e.g. port taken).
            ingesting = asyncio.create_task(ingestor.wait())
            await asyncio.wait({ingesting, serving}, return_when=asyncio.FIRST_COMPLETED)
            ingesting.cancel()
            if notifying is not None:
                ingestor.stopping.set()
                await notifying
        else:
            log.info("stop asked for during start-up")
    finally:
        await ingestor.stop()
        server.should_exit = True
        await serving
        await store.close()
    return 1 if ingestor.pipeline.fatal else 0


async def _start(
    settings: Settings, store: Store, ingestor: Ingestor, schema: Callable[[Store], Awaitable[object]]
) -> None:
    """``schema``: migrate (`cdr run`) or wait until current (`cdr ingest`); an unreachable
    ClickHouse is retried within the start-up budget either way."""
    await with_retries(
        "ClickHouse",
        lambda: schema(store),
        transient=(StoreUnavailable,),
        timeout_s=settings.common.startup_timeout_ms / 1000,
        setting=settings.clickhouse.env("clickhouse_url"),
        value=masked_url(settings.clickhouse.clickhouse_dsn),
    )
    await ingestor.start()


async def _unless_stopped(stopping: asyncio.Event, work: Awaitable[None]) -> bool:
    """Run ``work`` unless a stop comes first (then cancel it): True if it completed."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return True
