"""Memory of `cdr ingest` under a steady load: idle RSS, then RSS every 10 s while
`cdr simulate` publishes at a fixed rate, and the drift between the second minute and
the last (flat means bounded; a leak shows as a steady climb).

    python bench/soak.py --rate 3000 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time

import psutil

from bench.common import OUT, kafka, tree_rss
from tests.helpers import create_topics


def _rss_mb(process: psutil.Process) -> float:
    return tree_rss(process) / 2**20


async def soak(bootstrap: str, rate: float, minutes: float) -> None:
    topic = f"soak-{time.time_ns()}"
    await create_topics(bootstrap, topic, topic + ".dlq")
    data = OUT / "soak-store"
    shutil.rmtree(data, ignore_errors=True)
    env = {
        **os.environ,
        "CDR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CDR_KAFKA_TOPIC": topic,
        "CDR_KAFKA_DLQ_TOPIC": topic + ".dlq",
        "CDR_KAFKA_GROUP_ID": topic,
        "CDR_DATA_DIR": str(data),
        "CDR_OPS_PORT": "0",
        "CDR_LOG_LEVEL": "WARNING",
    }
    env.pop("CDR_CLICKHOUSE_URL", None)
    ingest = subprocess.Popen([sys.executable, "-m", "cdr.cli", "ingest"], env=env)
    proc = psutil.Process(ingest.pid)
    await asyncio.sleep(15)
    idle = _rss_mb(proc)
    print(f"idle RSS after start-up: {idle:.0f} MB")
    simulate = subprocess.Popen(
        [sys.executable, "-m", "cdr.cli", "simulate", "--rate", str(rate), "--seed", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, float]] = []
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < minutes * 60:
            await asyncio.sleep(10)
            if ingest.poll() is not None:
                raise SystemExit(f"cdr ingest exited with {ingest.returncode}")
            samples.append((elapsed, _rss_mb(proc)))
            print(f"  {elapsed / 60:5.1f} min  RSS {samples[-1][1]:.0f} MB", flush=True)
    finally:
        simulate.terminate()
        simulate.wait(30)
        ingest.terminate()
        ingest.wait(60)
    second = [m for t, m in samples if 60 <= t < 120]
    last = [m for t, m in samples if t >= samples[-1][0] - 60]
    peak = max(m for _, m in samples)
    early, late = statistics.mean(second), statistics.mean(last)
    print(
        f"rate {rate:.0f}/s for {minutes:.0f} min: idle {idle:.0f} MB, peak {peak:.0f} MB "
        f"(+{peak - idle:.0f} MB over idle); mean of minute 2 {early:.0f} MB, "
        f"of the last minute {late:.0f} MB (drift {late - early:+.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=3000)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    with kafka() as bootstrap:
        asyncio.run(soak(bootstrap, args.rate, args.minutes))


if __name__ == "__main__":
    main()
