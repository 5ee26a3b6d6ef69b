"""Shared fixtures: a real Kafka broker for the whole session, fresh stores per test.

Which broker:
  CDR_KAFKA_BOOTSTRAP_SERVERS set      -> that broker
  a Docker engine answers              -> testcontainers Kafka (+ a ClickHouse server)
  otherwise                            -> deploy/local/kafka.sh (KRaft Kafka from Maven jars)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


DOCKER = _docker_answers()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("CDR_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if DOCKER:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    run_dir = tmp_path_factory.mktemp("kafka")
    env = {**os.environ, "KAFKA_RUN_DIR": str(run_dir)}
    script = ROOT / "deploy" / "local" / "kafka.sh"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.fail(f"could not start the local Kafka broker:\n{started.stderr}\n{started.stdout}")
    last = started.stdout.strip().splitlines()[-1]
    try:
        yield last.split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[dict[str, str] | None]:
    """Settings of a ClickHouse server where Docker exists; None here (the embedded engine is used)."""
    if not DOCKER:
        yield None
        return
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer() as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        url = f"http://{container.username}@{host}:{port}"
        yield {"clickhouse_url": url, "clickhouse_password": container.password}


@pytest.fixture(params=["embedded", "server"])
def backend(request: pytest.FixtureRequest, clickhouse_server: dict[str, str] | None) -> dict[str, str]:
    """Each storage backend that exists on this machine, as settings ({} for chdb)."""
    if request.param == "server":
        if clickhouse_server is None:
            pytest.skip("no Docker engine here, so no ClickHouse server; the embedded engine is tested")
        return clickhouse_server
    return {}
