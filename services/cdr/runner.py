"""Long-running processes: the API alone, or ingest + API in one process."""

from __future__ import annotations

import asyncio
import logging
import signal

from cdr.api.app import create_app
from cdr.ingest.app import build_ingestor
from cdr.metrics import Metrics
from cdr.serve import http_server
from cdr.settings import Settings
from cdr.store import open_store
from cdr.store.migrations import migrate

log = logging.getLogger(__name__)


async def run_api(settings: Settings) -> int:
    """Serve the API; the schema is migrated by `cdr migrate` (a Helm hook in production)."""
    metrics = Metrics()
    store = open_store(settings)
    app = create_app(settings, store, metrics, close_store=True)
    server = http_server(app, settings.api_host, settings.api_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve())
    await _first(stop.wait(), task)
    server.should_exit = True
    await task
    return 0


async def run_all(settings: Settings) -> int:
    """Migrate, then ingest and serve the API from one process and one store.

    The embedded store can be owned by one process only, so this is how a laptop
    runs the whole service.
    """
    metrics = Metrics()
    store = open_store(settings)
    await migrate(store)
    ingestor = build_ingestor(settings, store, metrics)
    app = create_app(settings, store, metrics, extra_ready=ingestor.ready)
    server = http_server(app, settings.api_host, settings.api_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ingestor.stopping.set)
    api_task = asyncio.create_task(server.serve())
    try:
        await ingestor.start()
        log.info("serving", extra={"url": f"http://{settings.api_host}:{settings.api_port}/v1/cdr"})
        await _first(ingestor.wait(), api_task)
    finally:
        await ingestor.stop()
        server.should_exit = True
        await api_task
        await store.close()
    return 1 if ingestor.pipeline.fatal else 0


async def _first(*aws: object) -> None:
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in aws]  # type: ignore[arg-type]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        if task is not aws[-1]:
            task.cancel()
