"""A real API server (uvicorn on a loopback port) over a real embedded ClickHouse store."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        await store_events(self.store, evs, self.settings.zone)
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
    settings = api_settings(tmp_path_factory.mktemp("api-store"), api_port=free_port())
    store = open_store(settings)
    await migrate(store)
    app = create_app(settings, store, Metrics())
    server = http_server(app, "127.0.0.1", settings.api_port, settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    seeded = Api(f"http://127.0.0.1:{settings.api_port}", settings, store)
    await seeded.insert(events(2_400, seed=11, tenants=("t1.example", "t2.example", "t1.example"), spacing_s=300))
    try:
        yield seeded
    finally:
        server.should_exit = True
        await task
        await store.close()


async def second_server(api: Api, store: object = None, **settings: object) -> tuple[Any, Any, str]:
    """Another API server on the test store (or ``store``) with other settings."""
    changed = api.settings.model_copy(update=settings)
    port = free_port()
    server = http_server(create_app(changed, store or api.store, Metrics()), "127.0.0.1", port, changed)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return server, task, f"http://127.0.0.1:{port}"
