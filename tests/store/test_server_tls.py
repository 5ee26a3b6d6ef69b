"""An https:// ClickHouse URL: the certificate is verified against CDR_CLICKHOUSE_CA_FILE
(or the system CAs), a certificate that does not verify is a configuration error naming
the setting (no start-up retries), and the client certificate is shown for mutual TLS.

There is no ClickHouse server on this machine, so the peer is a real TLS server that
completes handshakes, records what it saw and closes without answering: these tests are
about TLS, which happens before any ClickHouse byte. The HTTP exchange itself is tested
against a server where Docker exists (tests marked ``server``)."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdr.settings import SettingsError, load_settings
from cdr.store import Store, StoreUnavailable
from cdr.store.client import ServerTls, open_store
from tests.certificates import Certificates, make_certificates

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the test certificates are made by openssl")


class TlsPeer:
    """Accepts TLS connections on localhost; records each completed handshake's client
    certificate subject (or None), then closes the connection."""

    def __init__(self, certs: Certificates, *, want_client_cert: bool) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server_cert, certs.server_key)
        if want_client_cert:
            self.context.verify_mode = ssl.CERT_OPTIONAL
            self.context.load_verify_locations(certs.ca)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[str | None] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert()
                    subject = dict(pair[0] for pair in peer["subject"]) if peer else None
                    self.handshakes.append(subject["commonName"] if subject else None)
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.listener.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def peer(certs: Certificates) -> Iterator[TlsPeer]:
    server = TlsPeer(certs, want_client_cert=True)
    yield server
    server.close()


async def _first_query(store: Store) -> BaseException:
    try:
        await store.query("SELECT 1")
    except Exception as exc:  # the test inspects what came out
        return exc
    finally:
        await store.close()
    raise AssertionError("the TLS peer answers no query; this cannot succeed")


async def test_a_trusted_certificate_gets_through_tls(peer: TlsPeer, certs: Certificates) -> None:
    store = Store(f"https://localhost:{peer.port}", database="cdr", tls=ServerTls(ca_file=str(certs.ca)))
    failure = await _first_query(store)
    # Past TLS: the peer closed without an HTTP answer, which is an outage, not configuration.
    assert isinstance(failure, StoreUnavailable), failure
    assert peer.handshakes and peer.handshakes[0] is None  # no client certificate asked for, none sent


async def test_an_untrusted_certificate_is_configuration_naming_the_setting(
    peer: TlsPeer, certs: Certificates, tmp_path: Path
) -> None:
    settings = load_settings(
        clickhouse_url=f"https://localhost:{peer.port}", clickhouse_ca_file=certs.other_ca, data_dir=tmp_path
    )
    failure = await _first_query(open_store(settings.clickhouse))
    assert isinstance(failure, SettingsError), failure
    assert str(failure).startswith("CDR_CLICKHOUSE_CA_FILE:") and str(certs.other_ca) in str(failure)
    assert peer.handshakes == []


async def test_a_certificate_for_another_host_is_refused(peer: TlsPeer, certs: Certificates) -> None:
    # The certificate names "localhost"; reaching it as 127.0.0.1 must not verify.
    store = Store(f"https://127.0.0.1:{peer.port}", database="cdr", tls=ServerTls(ca_file=str(certs.ca)))
    failure = await _first_query(store)
    assert isinstance(failure, SettingsError) and "CDR_CLICKHOUSE_CA_FILE" in str(failure), failure


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # what this test asks for
async def test_verification_can_be_turned_off(peer: TlsPeer, certs: Certificates) -> None:
    store = Store(f"https://127.0.0.1:{peer.port}", database="cdr", tls=ServerTls(verify=False))
    failure = await _first_query(store)
    assert isinstance(failure, StoreUnavailable), failure
    assert len(peer.handshakes) >= 1


async def test_the_client_certificate_is_shown(peer: TlsPeer, certs: Certificates, tmp_path: Path) -> None:
    settings = load_settings(
        clickhouse_url=f"https://localhost:{peer.port}",
        clickhouse_ca_file=certs.ca,
        clickhouse_client_cert_file=certs.client_cert,
        clickhouse_client_key_file=certs.client_key,
        data_dir=tmp_path,
    )
    failure = await _first_query(open_store(settings.clickhouse))
    assert isinstance(failure, StoreUnavailable), failure
    assert peer.handshakes and peer.handshakes[0] == "client"
