"""Throw-away certificates for tests of TLS: two CAs, a server certificate for
"localhost" and a client certificate, made by the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    other_ca: Path  # trusted by nobody here
    server_cert: Path
    server_key: Path
    server_store: Path  # key + chain, as Kafka's PEM key store wants it
    client_cert: Path
    client_key: Path


def _openssl(folder: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the test certificates are made by openssl"
    subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _issue(folder: Path, ca: str, name: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(
        extensions + "\nauthorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(
        folder,
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    _openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial"),
        *("-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext"),
    )


def make_certificates(folder: Path) -> Certificates:
    _ca(folder, "test-ca")
    _ca(folder, "other-ca")
    # Issued for "localhost" only: connecting by 127.0.0.1 is a hostname mismatch.
    _issue(folder, "test-ca", "broker", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth")
    _issue(folder, "test-ca", "client", "extendedKeyUsage=clientAuth")
    store = folder / "broker-store.pem"
    store.write_text((folder / "broker.key").read_text() + (folder / "broker.pem").read_text())
    return Certificates(
        ca=folder / "test-ca.pem",
        other_ca=folder / "other-ca.pem",
        server_cert=folder / "broker.pem",
        server_key=folder / "broker.key",
        server_store=store,
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
