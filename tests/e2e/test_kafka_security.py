"""`cdr` against a secured Kafka: a broker of this module's own with a SASL_SSL listener
(SCRAM-SHA-512 and PLAIN) and a mutual-TLS listener, certificates made here by openssl.
Ingest works end to end with the right credentials; a wrong password, an untrusted or
misnamed certificate, a missing client certificate fail at once (exit 2) with one log
line naming the setting, and no secret in the log."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.api.conftest import free_port
from tests.certificates import Certificates, make_certificates
from tests.e2e.own_broker import Broker, exit_code, json_lines, metrics_show, start_cdr
from tests.helpers import encoded, events, produce, read_all, service_env, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the test certificates are made by openssl")

SCRAM_USER, SCRAM_PASSWORD = "cdr-ingest", "scram-pa55-word"
PLAIN_USER, PLAIN_PASSWORD = "pbx", "plain-pa55-word"


@dataclass(frozen=True)
class SecureBroker:
    broker: Broker
    certs: Certificates
    sasl_ssl: str  # localhost:port
    mtls: str


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    folder = tmp_path_factory.mktemp("kafka-tls")
    certs = make_certificates(folder)
    sasl_port, tls_port = free_port(), free_port()
    properties = folder / "secure.properties"
    properties.write_text(
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n"
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";\n'
        f"ssl.keystore.type=PEM\nssl.keystore.location={certs.server_store}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={certs.ca}\n"
        "listener.name.ssl.ssl.client.auth=required\n"
    )
    broker = Broker(
        folder / "run",
        KAFKA_EXTRA_LISTENERS=f"SASL_SSL://localhost:{sasl_port},SSL://localhost:{tls_port}",
        KAFKA_EXTRA_PROPERTIES=str(properties),
        KAFKA_FORMAT_ARGS=f"--add-scram SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
    )
    broker.start()
    try:
        yield SecureBroker(broker, certs, f"localhost:{sasl_port}", f"localhost:{tls_port}")
    finally:
        broker.stop()


def _scram(secure: SecureBroker) -> dict[str, str]:
    return {
        "CDR_KAFKA_BOOTSTRAP_SERVERS": secure.sasl_ssl,
        "CDR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CDR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CDR_KAFKA_SASL_USERNAME": SCRAM_USER,
        "CDR_KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
        "CDR_KAFKA_SSL_CA_FILE": str(secure.certs.ca),
    }


def _mtls(secure: SecureBroker) -> dict[str, str]:
    return {
        "CDR_KAFKA_BOOTSTRAP_SERVERS": secure.mtls,
        "CDR_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CDR_KAFKA_SSL_CA_FILE": str(secure.certs.ca),
        "CDR_KAFKA_SSL_CERT_FILE": str(secure.certs.client_cert),
        "CDR_KAFKA_SSL_KEY_FILE": str(secure.certs.client_key),
    }


@pytest.mark.parametrize("transport", ["sasl_ssl", "mtls"])
async def test_ingest_through_a_secured_listener(secure: SecureBroker, tmp_path: Path, transport: str) -> None:
    """Events in, CDRs stored, a bad event dead-lettered: consumer and DLQ producer both
    authenticate (the test's own producer and reader use the broker's plaintext listener)."""
    port = free_port()
    env, topic = await service_env(secure.broker.bootstrap, tmp_path / "store", ops_port=port, batch_time_ms=200)
    if transport == "sasl_ssl":
        # The password from a file, as a mounted Secret gives it (with its trailing newline).
        password_file = tmp_path / "kafka-password"
        password_file.write_text(SCRAM_PASSWORD + "\n")
        env |= _scram(secure)
        del env["CDR_KAFKA_SASL_PASSWORD"]
        env["CDR_KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
    else:
        env |= _mtls(secure)
    await produce(secure.broker.bootstrap, topic, [*encoded(events(200, seed=91)), (b"k", b"{not json")])
    log = tmp_path / "ingest.log"
    process = start_cdr("ingest", env, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def stored() -> bool:

                return await metrics_show(client, "cdr_events_stored_total 200.0")

            await wait_for(stored, 90, "the 200 events stored through the secured listener")
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
        letters = await read_all(secure.broker.bootstrap, topic + ".dlq", 1)
        assert letters[0].value == b"{not json"
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log.read_text()[-3000:]


async def test_create_topics_and_simulate_use_the_same_security(secure: SecureBroker, tmp_path: Path) -> None:
    env, topic = await service_env(secure.broker.bootstrap, tmp_path / "store")
    env |= _scram(secure) | {"CDR_KAFKA_TOPIC": topic + ".new", "CDR_KAFKA_DLQ_TOPIC": topic + ".new.dlq"}
    log = tmp_path / "commands.log"
    assert await exit_code("create-topics", env, log) == 0, log.read_text()[-3000:]
    created = next(x for x in json_lines(log) if x["msg"] == "topics ready")
    assert created["topics_created"] == [topic + ".new", topic + ".new.dlq"]
    simulate = "simulate --count 25 --rate 1000 --seed 5 --tenants acme.example"
    assert await exit_code(simulate, env, log) == 0, log.read_text()[-3000:]
    published = await read_all(secure.broker.bootstrap, topic + ".new", 25)
    assert all(orjson.loads(record.value)["tenant_id"] == "acme.example" for record in published)


def _wrong_password(secure: SecureBroker) -> dict[str, str]:
    return _scram(secure) | {"CDR_KAFKA_SASL_PASSWORD": "not-the-pa55word"}


def _plain_wrong_user(secure: SecureBroker) -> dict[str, str]:
    return _scram(secure) | {"CDR_KAFKA_SASL_MECHANISM": "PLAIN", "CDR_KAFKA_SASL_USERNAME": "nobody"}


def _untrusted(secure: SecureBroker) -> dict[str, str]:
    return _scram(secure) | {"CDR_KAFKA_SSL_CA_FILE": str(secure.certs.other_ca)}


def _by_address(secure: SecureBroker) -> dict[str, str]:
    return _scram(secure) | {"CDR_KAFKA_BOOTSTRAP_SERVERS": secure.sasl_ssl.replace("localhost", "127.0.0.1")}


def _no_client_certificate(secure: SecureBroker) -> dict[str, str]:
    env = _mtls(secure)
    del env["CDR_KAFKA_SSL_CERT_FILE"], env["CDR_KAFKA_SSL_KEY_FILE"]
    return env


def _tls_to_plaintext(secure: SecureBroker) -> dict[str, str]:
    return _scram(secure) | {"CDR_KAFKA_BOOTSTRAP_SERVERS": secure.broker.bootstrap}


@pytest.mark.parametrize(
    ("case", "setting"),
    [
        (_wrong_password, "CDR_KAFKA_SASL_PASSWORD"),
        (_plain_wrong_user, "CDR_KAFKA_SASL_PASSWORD"),
        (_untrusted, "CDR_KAFKA_SSL_CA_FILE"),
        (_by_address, "CDR_KAFKA_SSL_CHECK_HOSTNAME"),
        (_no_client_certificate, "CDR_KAFKA_SSL_CERT_FILE"),
        (_tls_to_plaintext, "CDR_KAFKA_SECURITY_PROTOCOL"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else value,
)
async def test_misconfigured_security_fails_at_once_naming_the_setting(
    secure: SecureBroker, tmp_path: Path, case: object, setting: str
) -> None:
    env, _ = await service_env(secure.broker.bootstrap, tmp_path / "store", ops_port=0)
    env |= case(secure)  # type: ignore[operator]
    log = tmp_path / "ingest.log"
    started = time.monotonic()
    code = await exit_code("ingest", env, log, timeout=45)
    took = time.monotonic() - started
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert took < 30, took  # not the 60 s start-up retry budget
    assert "Traceback" not in text and SCRAM_PASSWORD not in text and "not-the-pa55word" not in text
    errors = [x for x in json_lines(log) if x["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["problems"][0]["setting"] == setting, orjson.dumps(errors[0])  # type: ignore[index]
