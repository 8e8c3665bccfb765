"""A node's Ed25519 identity, kept in its data directory."""

from __future__ import annotations

from pathlib import Path

import nacl.signing

from timpy.crypto.keys import decode_key, encode_key, write_secret_file
from timpy.files import tighten


def load_or_create_identity(path: Path | None) -> nacl.signing.SigningKey:
    """The node's signing key from ``path`` (created there if missing); in memory if None."""
    if path is None:
        return nacl.signing.SigningKey.generate()
    if path.exists():
        tighten(path)
        return nacl.signing.SigningKey(decode_key(path.read_text(), str(path)))
    key = nacl.signing.SigningKey.generate()
    write_secret_file(path, encode_key(bytes(key)))
    return key


def node_id_of(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key)[:8].hex()
