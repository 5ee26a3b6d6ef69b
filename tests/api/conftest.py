"""A real API server (uvicorn on a loopback port) over a real embedded ClickHouse store."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from cdr.api.app import create_app
from cdr.api.auth import token_digest
from cdr.metrics import Metrics
from cdr.serve import http_server
from cdr.settings import Settings, load_settings
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from tests.helpers import events, store_events

TOKENS = {
    "t1.example": "token-one-" + "a" * 20,
    "t2.example": "token-two-" + "b" * 20,
    "t3.example": "token-three-" + "c" * 20,
}
SECRET = "cursor-secret-for-tests-" + "x" * 16


def free_port() -> int:
    """A port for a server in another process, which binds it itself (a small race with
    anything else binding one meanwhile). A server in this process gets its socket bound
    already (``serve``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    """A clock a test moves on by hand (``create_app(clock=...)``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def replace_file(path: Path, text: str) -> None:
    """Swap in a new file as a Secret volume does (a new inode by rename), so a change is
    seen however coarse the file system's timestamps and whatever the size."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    staged.replace(path)


_START_TIMEOUT_S = 30.0


async def serve(app: ASGIApp, settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """An API server on a loopback socket bound before it starts (no port to lose to
    another process between picking and binding it), once it accepts connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = http_server(app, "127.0.0.1", port, settings.api)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            await task  # its exception, if it failed to start
            sock.close()
            raise RuntimeError(f"the API server did not start within {_START_TIMEOUT_S} s")
        await asyncio.sleep(0.05)
    return server, task, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running_api(settings: Settings, store: Store, metrics: Metrics | None = None) -> AsyncIterator[str]:
    """The API app over ``store`` served while the block runs (recording into ``metrics``);
    yields its base URL."""
    server, task, url = await serve(create_app(settings.api, settings.common, store, metrics or Metrics()), settings)
    try:
        yield url
    finally:
        server.should_exit = True
        await task


@dataclass(repr=False)
class Api:
    url: str
    settings: Settings
    store: Store
    events: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Api({self.url}, {len(self.events)} events)"

    async def scroll(self, tenant: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every record of a scroll of these filters, 1,000 per batch."""
        records: list[dict[str, Any]] = []
        async with self.client(tenant) as client:
            answer = (await client.get("/v1/cdr", params={**params, "scroll": "true", "limit": "1000"})).json()
            records.extend(answer["data"])
            while answer["scroll_id"]:
                answer = (await client.get("/v1/cdr", params={"scroll_id": answer["scroll_id"]})).json()
                records.extend(answer["data"])
        return records

    def client(self, tenant: str | None = "t1.example", token: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif tenant is not None:
            headers["Authorization"] = f"Bearer {TOKENS[tenant]}"
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    async def insert(self, evs: list[dict[str, Any]]) -> None:
        await store_events(self.store, evs, self.settings.common.zone)
        self.events.extend(evs)


def api_settings(data_dir: Path, **extra: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        clickhouse_url=None,
        api_tokens=",".join(f"{tenant}:{token_digest(token)}" for tenant, token in TOKENS.items()),
        cursor_secret=SECRET,
        # Tests that fire many requests at once are about isolation and order, not the
        # per-tenant limit (test_security's flood test sets its own).
        **{"tenant_max_concurrent_requests": 1_000, **extra},
    )


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    settings = api_settings(tmp_path_factory.mktemp("api-store"))
    store = open_store(settings.clickhouse)
    await migrate(store)
    server, task, url = await serve(create_app(settings.api, settings.common, store, Metrics()), settings)
    seeded = Api(url, settings, store)
    await seeded.insert(events(2_400, seed=11, tenants=("t1.example", "t2.example", "t1.example"), spacing_s=300))
    try:
        yield seeded
    finally:
        server.should_exit = True
        await task
        await store.close()


async def second_server(
    api: Api, store: Store | None = None, clock: Callable[[], float] | None = None, **settings: object
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Another API server on the test store (or ``store``) with other settings; ``clock``:
    the one its token and tenant files are rechecked by (a test moves it on)."""
    changed = api.settings.replaced(**settings)
    timing = {} if clock is None else {"clock": clock}
    return await serve(create_app(changed.api, changed.common, store or api.store, Metrics(), **timing), changed)
