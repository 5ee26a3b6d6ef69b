"""How every Kafka client of ours authenticates: TLS, mutual TLS and SASL (PLAIN, SCRAM).

One place turns the ``CDR_KAFKA_SECURITY_*`` / ``CDR_KAFKA_SASL_*`` / ``CDR_KAFKA_SSL_*``
settings into FastStream's security object; the plain aiokafka clients (dead-letter
producer, topic admin, simulator) get the same options through FastStream's own mapping,
so the consumer and the producers can never disagree.

aiokafka turns every failed bootstrap into "Unable to bootstrap", which start-up would
retry for minutes. ``check_kafka_access`` connects once itself to tell a wrong password,
an untrusted certificate or a plaintext/TLS mix-up (configuration: fail at once, naming
the setting) from a broker that is merely away (retried).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from cdr.settings import SettingsError

if TYPE_CHECKING:
    from cdr.settings import KafkaSettings

_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def kafka_security(kafka: KafkaSettings) -> BaseSecurity | None:
    """FastStream's security object for the settings; None for PLAINTEXT."""
    protocol = kafka.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol in ("SSL", "SASL_SSL")
    context = ssl_context(kafka) if tls else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    sasl = _SASL[kafka.kafka_sasl_mechanism]
    return sasl(kafka.kafka_sasl_username or "", sasl_password(kafka), ssl_context=context, use_ssl=tls)


def kafka_client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The same security as keyword arguments of aiokafka's producer, consumer and admin."""
    return options_of(kafka_security(kafka))


def options_of(security: BaseSecurity | None) -> dict[str, Any]:
    """aiokafka's keyword arguments for a security object already built (FastStream's mapping),
    so a process with several clients reads its key files and password file once."""
    return parse_security(security)


def sasl_password(kafka: KafkaSettings) -> str:
    if kafka.kafka_sasl_password is not None:
        return kafka.kafka_sasl_password.get_secret_value()
    path = kafka.kafka_sasl_password_file
    assert path is not None, "the settings require a password or a password file with SASL"
    try:
        # A mounted Secret usually ends with a newline that is not part of the password.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"CDR_KAFKA_SASL_PASSWORD_FILE: cannot read {path}: {exc.strerror or exc}") from exc


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """Verification on by default: the system's CAs, or CDR_KAFKA_SSL_CA_FILE alone when set;
    the hostname checked unless CDR_KAFKA_SSL_CHECK_HOSTNAME=false; a client certificate
    (mutual TLS) when CDR_KAFKA_SSL_CERT_FILE is set."""
    ca = kafka.kafka_ssl_ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"CDR_KAFKA_SSL_CA_FILE: cannot load CA certificates from {ca}: {_reason(exc)}") from exc
    context.check_hostname = kafka.kafka_ssl_check_hostname
    if kafka.kafka_ssl_cert_file is not None:
        key_password = kafka.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                kafka.kafka_ssl_cert_file,
                kafka.kafka_ssl_key_file,
                key_password.get_secret_value() if key_password else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"CDR_KAFKA_SSL_CERT_FILE: cannot load the client certificate {kafka.kafka_ssl_cert_file}"
                f" with key {kafka.kafka_ssl_key_file or '(in the same file)'}: {_reason(exc)}"
            ) from exc
    return context


async def check_kafka_access(kafka: KafkaSettings, options: dict[str, Any]) -> None:
    """Connect and authenticate to one bootstrap server, as our clients will (``options``:
    their security, from ``kafka_client_options``).

    SettingsError for what retrying cannot fix (credentials, certificates, protocol);
    KafkaConnectionError when no server answered (the caller retries)."""
    if not options:
        return  # PLAINTEXT: nothing to get wrong but the address, which start-up retries
    failures: list[str] = []
    for server in kafka.kafka_bootstrap_servers.split(","):
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            conn = await create_conn(
                host,
                int(port),
                client_id="cdr-access-check",
                request_timeout_ms=kafka.kafka_request_timeout_ms,
                **options,
            )
        except ssl.SSLCertVerificationError as exc:
            raise _untrusted(kafka, server, exc) from exc
        except ssl.SSLError as exc:
            raise _tls_failure(kafka, server, exc) from exc
        except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
            raise SettingsError(
                f"CDR_KAFKA_SASL_PASSWORD: {server} refused {kafka.kafka_sasl_mechanism} authentication as"
                f" {kafka.kafka_sasl_username!r} (check CDR_KAFKA_SASL_USERNAME and the password): {exc}"
            ) from exc
        except UnsupportedSaslMechanismError as exc:
            raise SettingsError(f"CDR_KAFKA_SASL_MECHANISM: {server} does not offer it: {exc}") from exc
        except (TimeoutError, OSError, KafkaError) as exc:
            if options.get("ssl_context") is not None:
                await _plaintext_listener(kafka, host, int(port))
                if isinstance(exc, KafkaConnectionError):
                    await _tls_alert(kafka, host, int(port), options["ssl_context"])
            failures.append(f"{server}: {_reason(exc)}")
            continue
        conn.close()
        return
    raise KafkaConnectionError("no bootstrap server answered: " + "; ".join(failures))


async def _plaintext_listener(kafka: KafkaSettings, host: str, port: int) -> None:
    """TLS sent to a listener without TLS ends in a reset, like a network fault would;
    a plain Kafka request that gets an answer tells the two apart."""
    try:
        conn = await create_conn(host, port, client_id="cdr-access-check", request_timeout_ms=2_000)
    except (TimeoutError, OSError, KafkaError):
        return
    conn.close()
    raise SettingsError(
        f"CDR_KAFKA_SECURITY_PROTOCOL: {host}:{port} answers Kafka without TLS, so"
        f" {kafka.kafka_security_protocol} cannot work there (a PLAINTEXT or SASL_PLAINTEXT listener)"
    )


async def _tls_alert(kafka: KafkaSettings, host: str, port: int, context: ssl.SSLContext) -> None:
    """A broker that wants a client certificate we did not send completes the TLS 1.3
    handshake, then sends an alert and closes: aiokafka only sees "connection closed".
    Read that alert ourselves; nothing read within a second means TLS itself is fine."""
    server = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), kafka.kafka_request_timeout_ms / 1000
        )
    except (TimeoutError, OSError):
        return  # the handshake itself failed the same way for create_conn: nothing to add
    try:
        await asyncio.wait_for(reader.read(1), 1.0)
    except ssl.SSLError as exc:
        raise _tls_failure(kafka, server, exc) from exc
    except (TimeoutError, OSError):
        return
    finally:
        writer.close()


def _untrusted(kafka: KafkaSettings, server: str, exc: ssl.SSLCertVerificationError) -> SettingsError:
    if "hostname" in str(exc).lower() or "ip address mismatch" in str(exc).lower():
        return SettingsError(
            f"CDR_KAFKA_SSL_CHECK_HOSTNAME: the certificate of {server} is not issued for that host"
            f" (connect by the name in the certificate, or turn the check off): {exc.verify_message}"
        )
    where = str(kafka.kafka_ssl_ca_file) if kafka.kafka_ssl_ca_file else "the system CA store"
    return SettingsError(
        f"CDR_KAFKA_SSL_CA_FILE: the certificate of {server} is not trusted by {where}: {exc.verify_message}"
    )


def _tls_failure(kafka: KafkaSettings, server: str, exc: ssl.SSLError) -> SettingsError:
    reason = _reason(exc)
    if "CERTIFICATE_REQUIRED" in reason.upper() or "BAD_CERTIFICATE" in reason.upper():
        return SettingsError(f"CDR_KAFKA_SSL_CERT_FILE: {server} did not accept our client certificate: {reason}")
    return SettingsError(
        f"CDR_KAFKA_SECURITY_PROTOCOL: TLS with {server} failed ({reason}); is the listener"
        f" {kafka.kafka_security_protocol}?"
    )


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
