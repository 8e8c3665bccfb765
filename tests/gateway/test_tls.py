"""Native TLS on the client listeners (tcps://, wss://) and mTLS on the admin
listener, with a throwaway CA made in the test (the ``cryptography`` package,
which aioquic already depends on; it is named in the test extra because these
tests use it directly)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import timpy
from tests.conftest import PASSWORD, node_config
from timpy.client.client import TlsError
from timpy.config import AdminConfig
from timpy.errors import ConfigError


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, sans: list[x509.GeneralName],
          usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("timpy test CA")
    # Valid for 127.0.0.1 and node1.timpy.test only: "localhost" is a wrong server name.
    server_key, server_cert = _leaf(ca_key, ca_cert, "node1.timpy.test",
                                    [x509.DNSName("node1.timpy.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                                    ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = _leaf(ca_key, ca_cert, "operator", [], ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_cert = _ca("some other CA")
    pki = Pki(d / "ca.pem", d / "node.pem", d / "node.key", d / "operator.pem", d / "operator.key", d / "other-ca.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    pki.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(client_key, pki.client_key)
    return pki


def tls_node_config(pki: Pki, **changes: object):  # noqa: ANN201
    return node_config(tls_cert=pki.server_cert, tls_key=pki.server_key, **changes)


async def test_tls_clients_chat_over_tcps_and_wss(pki):
    async with timpy.open_node(tls_node_config(pki)) as node:
        assert node.tcp_url.startswith("tcps://") and node.ws_url.startswith("wss://")
        await timpy.register(node.tcp_url, "alice", PASSWORD, ca=pki.ca)
        await timpy.register(node.ws_url, "bob", PASSWORD, ca=pki.ca)
        async with timpy.connect(node.tcp_url, "alice", PASSWORD, ca=pki.ca) as a, \
                timpy.connect(node.ws_url, "bob", PASSWORD, ca=pki.ca) as b:
            await a.send("bob", "over tls")
            assert (await b.next_message(timeout=10)).body == b"over tls"
            await b.send("alice", "and back")
            assert (await a.next_message(timeout=10)).body == b"and back"


@pytest.mark.parametrize("scheme", ["tcps", "wss"])
async def test_wrong_server_name_or_untrusted_ca_is_refused_with_a_clear_error(pki, scheme):
    async with timpy.open_node(tls_node_config(pki)) as node:
        url = node.tcp_url if scheme == "tcps" else node.ws_url
        port = url.rstrip("/").rsplit(":", 1)[1]
        with pytest.raises(TlsError, match="not valid for the name 'localhost'"):
            await timpy.register(f"{scheme}://localhost:{port}/", "alice", PASSWORD, ca=pki.ca)
        with pytest.raises(TlsError, match="not trusted.*private CA.*--ca FILE"):
            await timpy.register(url, "alice", PASSWORD)  # the system's CAs do not know the test CA
        with pytest.raises(TlsError, match="not trusted"):
            await timpy.register(url, "alice", PASSWORD, ca=pki.other_ca)
        # The node shrugs all that off and serves a client that trusts it.
        await timpy.register(url, "alice", PASSWORD, ca=pki.ca)


async def test_a_plain_client_on_a_tls_port_fails_instead_of_hanging(pki):
    async with timpy.open_node(tls_node_config(pki)) as node:
        plain = node.tcp_url.replace("tcps://", "tcp://")
        with trio.fail_after(20):
            with pytest.raises((timpy.RemoteError, OSError)):
                await timpy.register(plain, "alice", PASSWORD)
        with pytest.raises(TlsError, match="TLS handshake failed"):
            async with timpy.open_node(node_config()) as plain_node:
                await timpy.register(plain_node.tcp_url.replace("tcp://", "tcps://"), "alice", PASSWORD, ca=pki.ca)


def _get(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310 - https to loopback
        return response.status


async def test_admin_mtls_requires_a_client_certificate(pki):
    admin = AdminConfig(listen="127.0.0.1:0", tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    async with timpy.open_node(node_config(admin=admin)) as node:
        host, port = node.admin_address
        url = f"https://{host}:{port}/health"
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        assert await trio.to_thread.run_sync(_get, url, with_cert) == 200
        without = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            await trio.to_thread.run_sync(_get, url, without)
        assert await trio.to_thread.run_sync(_get, url, with_cert) == 200  # still serving


async def test_admin_https_without_client_certificates(pki):
    admin = AdminConfig(listen="127.0.0.1:0", tls_cert=pki.server_cert, tls_key=pki.server_key)
    async with timpy.open_node(node_config(admin=admin)) as node:
        host, port = node.admin_address
        context = ssl.create_default_context(cafile=str(pki.ca))
        assert await trio.to_thread.run_sync(_get, f"https://{host}:{port}/health", context) == 200


async def test_missing_or_bad_certificate_files_stop_the_node_naming_the_option(pki, tmp_path):
    with pytest.raises(ConfigError, match=r"^tls_cert = .*missing.pem.*existing file"):
        node_config(tls_cert=tmp_path / "missing.pem", tls_key=pki.server_key)
    with pytest.raises(ConfigError, match=r"^\[admin\] tls_key = .*nope.key.*existing file"):
        AdminConfig(listen="127.0.0.1:0", tls_cert=pki.server_cert, tls_key=tmp_path / "nope.key")
    with pytest.raises(ConfigError, match="tls_cert.*set together with tls_key"):
        node_config(tls_cert=pki.server_cert)
    # Files that exist but are not a certificate and its key: refused at start, naming the options.
    with pytest.raises(ConfigError, match=r"^tls_cert / tls_key: .* not a PEM certificate and its matching private key"):
        async with timpy.open_node(node_config(tls_cert=pki.server_cert, tls_key=pki.client_key)):
            pass
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    admin = AdminConfig(listen="127.0.0.1:0", tls_cert=not_pem, tls_key=pki.server_key)
    with pytest.raises(ConfigError, match=r"^admin\.tls_cert / admin\.tls_key: .*not.pem"):
        async with timpy.open_node(node_config(admin=admin)):
            pass
