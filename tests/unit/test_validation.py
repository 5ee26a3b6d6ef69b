"""The validation worker process: a worker that dies loses no batch, and a worker whose
consumer is killed outright does not outlive it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import psutil

from cdr.ingest.validation import Validator
from cdr.simulate import make_event
from tests.helpers import validation_workers

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
LATEST = datetime(2030, 1, 1, tzinfo=UTC)


def values(n: int) -> list[bytes]:
    rng = random.Random(7)
    start = datetime(2024, 3, 9, tzinfo=UTC)
    return [orjson.dumps(make_event(rng, "t.example", start + timedelta(seconds=i))) for i in range(n)]


def gone(process: psutil.Process, within_s: float) -> bool:
    try:
        process.wait(timeout=within_s)
    except psutil.TimeoutExpired:
        return False
    return True


async def test_a_worker_that_dies_loses_no_batch_and_is_replaced() -> None:
    others = {p.pid for p in validation_workers(psutil.Process(os.getpid()))}  # another test's, still exiting
    validator = Validator(HCM, processes=1)
    await validator.start()
    try:
        batch = values(50)
        first = [p for p in validation_workers(psutil.Process(os.getpid())) if p.pid not in others]
        assert len(first) == 1
        assert (await validator(batch, LATEST)).rows.num_rows == 50

        first[0].kill()
        assert gone(first[0], 10)
        verdicts = await validator(batch, LATEST)  # validated here, in a thread
        assert verdicts.rows.column("id").to_pylist() == [orjson.loads(v)["id"] for v in batch]
        assert (await validator(batch, LATEST)).rows.num_rows == 50  # on the new worker
        second = [p for p in validation_workers(psutil.Process(os.getpid())) if p.pid not in others and p.is_running()]
        assert len(second) == 1
        assert second[0].pid != first[0].pid
    finally:
        validator.close()


_CONSUMER = """
import asyncio, os, sys
from zoneinfo import ZoneInfo
from cdr.ingest.validation import Validator

async def main():
    validator = Validator(ZoneInfo("UTC"), processes=1)
    await validator.start()
    print("ready", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_worker_exits_with_its_killed_consumer_and_ignores_ctrl_c() -> None:
    consumer = subprocess.Popen([sys.executable, "-c", _CONSUMER], stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "ready"
        (worker,) = validation_workers(psutil.Process(consumer.pid))
        worker.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the whole group
        time.sleep(0.5)
        assert worker.is_running()
        consumer.kill()
        consumer.wait(timeout=10)
        assert gone(worker, 10), "the worker outlived its consumer"
    finally:
        consumer.kill()
        consumer.wait(timeout=10)
