"""Clients generated from the checked-in OpenAPI document (schemas/openapi.json) by the
generators integrators reach for first, driven against the live API: a page, a scroll to
the end, one CDR by id, stats and a typed 400. The generators are pinned: the Python one
in the dev dependencies (uv.lock), the TypeScript ones in clients/typescript's
package-lock.json (installed once into .cache/). A document a generator reads but whose
client then fails on a real answer (time_answered as anyOf [a time, const ""]: the
generated parser took the const branch and raised on every answered call) fails here."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from tests.api.conftest import TOKENS, Api

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "schemas" / "openapi.json"
TYPESCRIPT = Path(__file__).parent / "clients" / "typescript"
PACKAGE = "cdr_generated_client"


async def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """A command's standard output; its output in the failure when it exits non-zero."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, f"{command} exited {process.returncode}:\n{out.decode()}\n{err.decode()}"
    return out.decode()


async def _truth(api: Api) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What the API itself answers, over plain HTTP: every t1 record in order, and its stats by day."""
    records = await api.scroll("t1.example", {})
    async with api.client() as client:
        stats = (await client.get("/v1/cdr/stats", params={"group_by": "day"})).json()
    # The test proves nothing unless both kinds of time_answered come back.
    assert {r["time_answered"] == "" for r in records} == {True, False}
    return records, stats


@pytest.fixture(scope="module")
async def generated_python(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModuleType]:
    out = tmp_path_factory.mktemp("python-client")
    config = out / "config.yaml"
    # No formatter hook: how the generated code looks is not what is tested.
    config.write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n")
    generator = Path(sys.executable).parent / "openapi-python-client"
    command = [generator, "generate", "--path", DOCUMENT, "--meta", "none", "--output-path", out / PACKAGE]
    output = await _run(*command, "--config", config, cwd=out)
    assert "Warning" not in output, output  # a schema the generator had to skip or guess at
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


async def test_a_generated_python_client_reads_every_answer(api: Api, generated_python: ModuleType) -> None:
    records, stats = await _truth(api)
    operations = {
        name: importlib.import_module(f"{PACKAGE}.api.default.{name}") for name in ("list_cdrs", "get_cdr", "cdr_stats")
    }
    models = importlib.import_module(f"{PACKAGE}.models")
    async with generated_python.AuthenticatedClient(base_url=api.url, token=TOKENS["t1.example"]) as client:
        page = await operations["list_cdrs"].asyncio(client=client, page=1, limit=50)
        assert isinstance(page, models.Page), page
        assert page.total == len(records) and [r.to_dict() for r in page.data] == records[:50]

        scrolled: list[dict[str, Any]] = []
        batch = await operations["list_cdrs"].asyncio(client=client, scroll="true", limit=1000)
        while True:
            assert isinstance(batch, models.Scroll), batch
            scrolled.extend(r.to_dict() for r in batch.data)
            if batch.scroll_id is None:
                break
            batch = await operations["list_cdrs"].asyncio(client=client, scroll_id=batch.scroll_id)
        assert scrolled == records

        for wanted in (
            next(r for r in records if r["time_answered"]),
            next(r for r in records if not r["time_answered"]),
        ):
            one = await operations["get_cdr"].asyncio(wanted["id"], client=client)
            assert isinstance(one, models.Cdr) and one.to_dict() == wanted

        by_day = await operations["cdr_stats"].asyncio(client=client, group_by="day")
        assert isinstance(by_day, models.Stats) and by_day.to_dict() == stats

        bad = await operations["list_cdrs"].asyncio(client=client, limit=0)
        assert isinstance(bad, models.Error), bad
        assert bad.error.code == models.ErrorErrorCode.INVALID_PARAMETER and bad.error.param == "limit"


async def _installed_typescript_tools() -> Path:
    """clients/typescript's locked packages, installed once per lock file into .cache/."""
    lock = (TYPESCRIPT / "package-lock.json").read_bytes()
    home = ROOT / ".cache" / "typescript-client" / hashlib.sha256(lock).hexdigest()[:16]
    if not (home / ".installed").exists():
        home.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(TYPESCRIPT / name, home / name)
        await _run("npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", cwd=home)
        (home / ".installed").touch()
    return home


@pytest.fixture(scope="module")
async def typescript_tools() -> Path:
    return await _installed_typescript_tools()


@pytest.mark.skipif(
    shutil.which("npm") is None and not os.environ.get("CI"),
    reason="needs Node.js 20+ with npm (CI machines have it, and there this test runs)",
)
async def test_a_generated_typescript_client_reads_every_answer(api: Api, typescript_tools: Path) -> None:
    records, stats = await _truth(api)
    # Under the installed packages, so the compiler and node find them in node_modules.
    work = Path(tempfile.mkdtemp(dir=typescript_tools, prefix="run-"))
    try:
        for name in ("driver.ts", "tsconfig.json"):
            shutil.copyfile(TYPESCRIPT / name, work / name)
        tools = typescript_tools / "node_modules" / ".bin"
        await _run(tools / "openapi-typescript", DOCUMENT, "--output", work / "schema.d.ts", cwd=work)
        await _run(tools / "tsc", "--project", work / "tsconfig.json", cwd=work)
        env = {"CDR_URL": api.url, "CDR_TOKEN": TOKENS["t1.example"]}
        read = orjson.loads(await _run("node", work / "out" / "driver.js", cwd=work, env=env))
    finally:
        shutil.rmtree(work)
    assert read["page"] == {"total": len(records), "ids": [r["id"] for r in records[:50]]}
    assert read["scrolled"] == records
    assert read["one"] == {"record": records[0], "answered": records[0]["time_answered"]}
    assert read["stats"] == {"body": stats, "calls": len(records)}
    assert read["bad"] == {"status": 400, "code": "invalid_parameter", "param": "limit"}
