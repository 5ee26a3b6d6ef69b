"""Shared by the benchmarks: a Kafka broker, timing and memory helpers."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


@contextmanager
def kafka() -> Iterator[str]:
    """CDR_KAFKA_BOOTSTRAP_SERVERS, or a local broker of our own for the run."""
    configured = os.environ.get("CDR_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    run_dir = OUT / "kafka"
    env = {**os.environ, "KAFKA_RUN_DIR": str(run_dir), "KAFKA_HEAP": "1g"}
    script = ROOT / "deploy" / "local" / "kafka.sh"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, check=True)
    try:
        yield started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, check=False)


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, Python {platform.python_version()}"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its children (a shared library once per process)."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


class PeakRss:
    """Peak resident memory of a process tree, sampled."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0

    def sample(self) -> None:
        with suppress(psutil.Error):
            self.peak = max(self.peak, tree_rss(self.process))
