"""TLS for the node's listeners: the client listeners (``tcps://``,
``wss://``) and the admin HTTPS listener with optional client certificates.

Certificates and keys are PEM files named in the config; a file that is
missing, unreadable or not a certificate and its key stops the node at start
with an error naming the option.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from timpy.errors import ConfigError


def _readable(option: str, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ConfigError(f"{option}: the file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None


def server_context(cert: Path, key: Path, prefix: str = "", client_ca: Path | None = None) -> ssl.SSLContext:
    """A server-side context for ``cert`` and ``key``; with ``client_ca``,
    clients must present a certificate that CA signed (mTLS). ``prefix`` is
    the config table ("" or "admin.") for error messages."""
    _readable(f"{prefix}tls_cert", cert)
    _readable(f"{prefix}tls_key", key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{prefix}tls_cert / {prefix}tls_key: {cert} and {key} are not a PEM certificate and its "
            f"matching private key ({exc.reason or exc})"
        ) from None
    if client_ca is not None:
        _readable(f"{prefix}tls_client_ca", client_ca)
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{prefix}tls_client_ca: {client_ca} holds no PEM CA certificate ({exc.reason or exc})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
