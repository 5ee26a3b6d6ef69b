"""`cdr notify`: the notifier with /healthz, /readyz and /metrics on CDR_OPS_PORT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal

from starlette.applications import Starlette

from cdr.metrics import Metrics
from cdr.notify.notifier import Notifier
from cdr.ops import ops_routes
from cdr.serve import http_server
from cdr.settings import Settings
from cdr.startup import masked_url, with_retries
from cdr.store import StoreUnavailable, open_store
from cdr.store.feed_hub import feed_hub_for
from cdr.store.migrations import migrate, wait_until_current

log = logging.getLogger(__name__)


async def run_notify(settings: Settings) -> int:
    """Deliver webhooks until SIGTERM/SIGINT. On a server it waits for `cdr migrate`; an
    embedded store is this process's alone, so it migrates (as `cdr ingest` does there)."""
    metrics = Metrics(roles=("notify",))
    store = open_store(settings.clickhouse)
    notifier = Notifier(
        settings.notify, settings.common, store, metrics, hub=feed_hub_for(settings.api, store, metrics)
    )
    stopping = asyncio.Event()

    async def ready() -> tuple[bool, dict[str, str]]:
        return notifier.running, {"notifier": "running" if notifier.running else "starting"}

    server = http_server(
        Starlette(routes=ops_routes(metrics, ready)), settings.api.api_host, settings.common.ops_port, settings.api
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    serving = asyncio.create_task(server.serve())
    schema = (
        functools.partial(migrate, feed_retention_days=settings.api.feed_retention_days)
        if settings.clickhouse.embedded
        else wait_until_current
    )
    starting = asyncio.create_task(
        with_retries(
            "ClickHouse",
            lambda: schema(store),
            transient=(StoreUnavailable,),
            timeout_s=settings.common.startup_timeout_ms / 1000,
            setting=settings.clickhouse.env("clickhouse_url"),
            value=masked_url(settings.clickhouse.clickhouse_dsn),
        )
    )
    stopped = asyncio.create_task(stopping.wait())
    failed = False
    try:
        # A stop during start-up (ClickHouse unreachable, the schema not migrated yet) is obeyed.
        await asyncio.wait({starting, stopped, serving}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # its failure: StartupFailed, exit 1 (cli)
            log.info("notifier started", extra={"endpoints": len(notifier.directory.endpoints)})
            running = asyncio.create_task(notifier.run(stopping))
            # Until a signal, or the ops server stopping by itself (e.g. its port taken).
            await asyncio.wait({running, serving}, return_when=asyncio.FIRST_COMPLETED)
            failed = serving.done() and not stopping.is_set()
            stopping.set()
            await running
        else:
            failed = not stopping.is_set()
    finally:
        for task in (starting, stopped):
            task.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await store.close()
    return 1 if failed else 0
