"""`cdr ingest` against a broker of its own that the tests freeze (SIGSTOP: connections
hang, as in a network partition) and thaw: start-up retries, readiness and metrics that
follow the broker, bounded shutdown, logs that do not flood. And start-up failures:
each one structured log line naming the setting, exit 2 for bad configuration."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from cdr.ingest.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from cdr.store.migrations import load_migrations
from tests.api.conftest import free_port
from tests.e2e.own_broker import Broker, exit_code, get_or_none, json_lines, metrics_show, start_cdr
from tests.helpers import committed_offsets, encoded, events, produce, read_all, service_env, unique, wait_for


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    own = Broker(tmp_path_factory.mktemp("kafka-own"))
    own.start()
    try:
        yield own
    finally:
        own.stop()


async def _quick_env(broker: Broker, tmp_path: Path, port: int, **extra: object) -> tuple[dict[str, str], str]:
    """An ingestor that notices within a second or two (short batches, probes, timeouts)."""
    quick = {"batch_time_ms": 200, "health_interval_ms": 500, "kafka_request_timeout_ms": 2_000}
    return await service_env(broker.bootstrap, tmp_path / "store", ops_port=port, **quick, **extra)


async def test_broker_outage_readiness_logs_and_a_bounded_stop(broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    env, topic = await _quick_env(broker, tmp_path, port, shutdown_timeout_ms=6_000, startup_timeout_ms=120_000)
    await produce(broker.bootstrap, topic, encoded(events(300, seed=81)))
    log = tmp_path / "ingest.log"
    # Start-up while the broker does not answer: retried, not a traceback.
    broker.signal(signal.SIGSTOP)
    process = start_cdr("ingest", env, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def answers(status: int, needle: str) -> bool:
                ready = await get_or_none(client, "/readyz")
                return ready is not None and ready.status_code == status and needle in ready.text

            await wait_for(lambda: answers(503, "starting"), 60, "/readyz saying starting")
            await asyncio.sleep(3)
            assert process.poll() is None, log.read_text()[-3000:]
            broker.signal(signal.SIGCONT)

            async def stored_all() -> bool:

                return await metrics_show(client, "cdr_events_stored_total 300.0")

            await wait_for(stored_all, 90, "the 300 events stored after the broker came back")
            await wait_for(lambda: answers(200, '"kafka":"ok"'), 30, "ready with Kafka ok")

            # The broker stops answering: not ready, Kafka down in the metrics, few log lines.
            lines_before = len(json_lines(log))
            broker.signal(signal.SIGSTOP)
            await wait_for(lambda: answers(503, "unreachable"), 30, "/readyz reporting Kafka unreachable")
            metrics = (await client.get("/metrics")).text
            assert "cdr_kafka_up 0.0" in metrics and "cdr_ingest_healthy 0.0" in metrics
            await asyncio.sleep(10)
            outage = json_lines(log)[lines_before:]
            assert len(outage) <= 12, [f"{x['logger']}: {x['msg']}" for x in outage]
            assert sum(1 for x in outage if x["msg"] == "Kafka unreachable") == 1

            # Back: ready again, one line saying so.
            broker.signal(signal.SIGCONT)
            await wait_for(lambda: answers(200, '"kafka":"ok"'), 60, "ready again after the broker came back")
            assert any(x["msg"] == "Kafka reachable again" for x in json_lines(log))

            # SIGTERM while the broker hangs: the stop is bounded and clean.
            await produce(broker.bootstrap, topic, encoded(events(50, seed=82)))
            broker.signal(signal.SIGSTOP)
            await asyncio.sleep(1)
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        took = time.monotonic() - asked
    finally:
        broker.signal(signal.SIGCONT)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    assert took < 6 + 2 + 3, took  # the shutdown budget, the closing share, process exit
    assert any(x["msg"] == "ingest stopped" for x in json_lines(log))


async def test_a_stuck_dead_letter_topic_turns_readiness_off_then_recovers(broker: Broker, tmp_path: Path) -> None:
    """A dead-letter topic that refuses every write (its max.message.bytes is below any
    letter): the ingestor keeps retrying (not a halt), says so on /readyz, commits
    nothing, and delivers once the topic accepts writes again."""
    port = free_port()
    env, topic = await _quick_env(broker, tmp_path, port, insert_retry_max_ms=1_000, dlq_min_messages=1_000)
    dlq = unique("stuck-dlq")
    env["CDR_KAFKA_DLQ_TOPIC"] = dlq
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": "64"})])
        await produce(broker.bootstrap, topic, [(b"k", b"not json"), *encoded(events(20, seed=83))])
        log = tmp_path / "ingest.log"
        process = start_cdr("ingest", env, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

                async def not_ready_for_dead_letters() -> bool:
                    ready = await get_or_none(client, "/readyz")
                    return ready is not None and ready.status_code == 503 and "sends failing" in ready.text

                await wait_for(not_ready_for_dead_letters, 60, "/readyz reporting failing dead-letter sends")
                assert process.poll() is None
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, dlq, {"max.message.bytes": "1048576"})]
                )

                async def delivered() -> bool:
                    metrics = await get_or_none(client, "/metrics")
                    ready = await get_or_none(client, "/readyz")
                    return (
                        metrics is not None
                        and ready is not None
                        and ready.status_code == 200
                        and "cdr_events_stored_total 20.0" in metrics.text
                        and 'cdr_events_dead_lettered_total{reason="not_json"} 1.0' in metrics.text
                    )

                await wait_for(delivered, 60, "the dead letter delivered and ready again")
                metrics = (await client.get("/metrics")).text
            failures = next(line for line in metrics.splitlines() if line.startswith("cdr_dlq_send_failures_total "))
            assert float(failures.split()[1]) >= 1
            # Retried sends may publish a letter more than once (README: at-least-once); the
            # source headers are the key a DLQ reader deduplicates on.
            letters = await read_all(broker.bootstrap, dlq, expected=1)
            sources = {
                tuple(dict(r.headers)[h] for h in (HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET)) for r in letters
            }
            assert len(sources) == 1 and {r.value for r in letters} == {b"not json"}
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
        assert code == 0, log.read_text()[-3000:]
    finally:
        await admin.close()


def _native_string(value: str) -> bytes:
    data = value.encode()
    return bytes([len(data)]) + data  # LEB128 of a length < 128


def _applied_migrations_native() -> bytes:
    """``SELECT version, checksum FROM schema_migrations`` in ClickHouse's Native format:
    every migration recorded, as `cdr migrate` would have left it."""
    applied = load_migrations()
    block = bytes([2, len(applied)])
    block += _native_string("version") + _native_string("UInt32")
    block += b"".join(m.version.to_bytes(4, "little") for m in applied)
    block += _native_string("checksum") + _native_string("String")
    block += b"".join(_native_string(m.checksum) for m in applied)
    return block


class _HangingInserts(BaseHTTPRequestHandler):
    """A ClickHouse HTTP peer that answers the client's start-up (empty results, and every
    migration recorded) and takes the events' inserts without ever answering them."""

    inserts = threading.Event()  # an insert of events arrived
    release = threading.Event()  # the test is over: let the hung handlers go

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "INSERT+INTO" in self.path and "%60cdr%60" in self.path:
            type(self).inserts.set()
            type(self).release.wait()
            return
        if b"version()" in body:
            answer = b"24.8.1.1\tUTC\n"
        elif b"schema_migrations" in body and body.lstrip().upper().startswith(b"SELECT"):
            answer = _applied_migrations_native()  # the schema is current: ingest does not wait
        else:
            answer = b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST


async def test_a_stop_is_bounded_while_clickhouse_never_answers_an_insert(kafka_bootstrap: str, tmp_path: Path) -> None:
    """SIGTERM while an insert hangs on a server that never answers: the batch is abandoned
    uncommitted and the process exits within CDR_SHUTDOWN_TIMEOUT_MS and a few seconds, not
    after the insert's HTTP timeout (300 s)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangingInserts)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env, topic = await service_env(kafka_bootstrap, tmp_path / "store", ops_port=0, shutdown_timeout_ms=3_000)
    env["CDR_CLICKHOUSE_URL"] = f"http://default@127.0.0.1:{server.server_port}"
    await produce(kafka_bootstrap, topic, encoded(events(50, seed=84)))
    log = tmp_path / "ingest.log"
    process = start_cdr("ingest", env, log)
    try:
        assert await asyncio.to_thread(_HangingInserts.inserts.wait, 60), log.read_text()[-3000:]
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
        took = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _HangingInserts.release.set()
        server.shutdown()
    assert code == 0, log.read_text()[-3000:]
    assert took < 3 + 10, took  # the shutdown budget, and a margin for closing and exit
    assert any(x["msg"] == "ingest stopped" for x in json_lines(log))
    offsets = await committed_offsets(kafka_bootstrap, env["CDR_KAFKA_GROUP_ID"], topic)
    assert sum(offsets.values()) == 0


async def test_a_missing_topic_fails_fast_naming_its_setting(kafka_bootstrap: str, tmp_path: Path) -> None:
    env, _ = await service_env(kafka_bootstrap, tmp_path / "store", ops_port=0)
    env["CDR_KAFKA_DLQ_TOPIC"] = unique("no-such-dlq")
    log = tmp_path / "ingest.log"
    started = time.monotonic()
    code = await exit_code("ingest", env, log)
    assert code == 2, log.read_text()[-3000:]
    assert time.monotonic() - started < 30
    failure = next(x for x in json_lines(log) if x["msg"] == "invalid configuration")
    assert failure["problems"][0]["setting"] == "CDR_KAFKA_DLQ_TOPIC"  # type: ignore[index]
    assert "does not exist" in failure["problems"][0]["error"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("variable", "value", "code", "needle"),
    [
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "", 2, "not host:port"),
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "kafka-without-port", 2, "not host:port"),
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1", 1, "Kafka unreachable"),
        ("CDR_DATA_DIR", "<a file>", 2, "cannot create the folder"),
        ("CDR_CLICKHOUSE_URL", "http://user@127.0.0.1:1", 1, "ClickHouse unreachable"),
        ("CDR_CLICKHOUSE_URL", "http://user:hunter2@127.0.0.1:1", 2, "must not carry a password"),
        ("CDR_KAFKA_DLQ_TOPIC", "bad topic!", 2, "is not a Kafka topic name"),
    ],
)
async def test_start_up_failures_are_one_structured_line(
    kafka_bootstrap: str, tmp_path: Path, variable: str, value: str, code: int, needle: str
) -> None:
    env, _ = await service_env(kafka_bootstrap, tmp_path / "store", ops_port=0, startup_timeout_ms=2_000)
    if value == "<a file>":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a folder")
    env[variable] = value
    log = tmp_path / "ingest.log"
    returned = await exit_code("ingest", env, log)
    text = log.read_text()
    assert returned == code, text[-3000:]
    assert "Traceback" not in text and "hunter2" not in text
    errors = [x for x in json_lines(log) if x["level"] == "error"]
    assert len(errors) == 1, errors
    error = orjson.dumps(errors[0]).decode()
    assert variable in error and needle in error, error
