"""Helpers of the end-to-end tests that run `cdr` commands against a Kafka broker of their own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import ROOT


class Broker:
    """A single-node Kafka that one test module owns (deploy/local/kafka.sh); ``extra``
    are more of the script's KAFKA_* variables (listeners, properties, format arguments)."""

    def __init__(self, run_dir: Path, **extra: str) -> None:
        self.run_dir = run_dir
        self.env = {**os.environ, "KAFKA_RUN_DIR": str(run_dir), **extra}
        self.script = ROOT / "deploy" / "local" / "kafka.sh"
        self.bootstrap = ""

    def start(self) -> None:
        started = subprocess.run([str(self.script), "start"], env=self.env, capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            pytest.fail(f"could not start a Kafka broker of our own:\n{started.stderr}\n{started.stdout}")
        self.bootstrap = started.stdout.strip().splitlines()[-1].split("=", 1)[1]

    def signal(self, sig: signal.Signals) -> None:
        os.kill(int((self.run_dir / "pid").read_text()), sig)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        subprocess.run([str(self.script), "stop"], env=self.env, capture_output=True, timeout=60)


def start_cdr(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`cdr <command>`; ``command`` may carry arguments (split on spaces)."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cdr.cli", *command.split()], env=env, stdout=out, stderr=out)


async def exit_code(command: str, env: dict[str, str], log: Path, timeout: float = 60) -> int:
    """Run `cdr <command>` to its end; killed (and the test failed) if it outlives ``timeout``."""
    process = start_cdr(command, env, log)
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"`cdr {command}` still running after {timeout} s: " + log.read_text()[-2000:]) from None


def json_lines(log: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]


async def get_or_none(client: httpx.AsyncClient, path: str) -> httpx.Response | None:
    try:
        return await client.get(path)
    except httpx.TransportError:
        return None


async def metrics_show(client: httpx.AsyncClient, line: str) -> bool:
    """Whether /metrics answers and has ``line`` (e.g. ``cdr_events_stored_total 20.0``)."""
    metrics = await get_or_none(client, "/metrics")
    return metrics is not None and line in metrics.text
