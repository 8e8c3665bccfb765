"""Sealing of stored payloads with XChaCha20-Poly1305.

The associated data names the row a payload belongs to (table, key, and
sequence where there is one), so a sealed value copied into another row, or
two rows swapped, fail to open instead of showing the wrong data.
"""

from __future__ import annotations

import nacl.bindings as nb
import nacl.exceptions
import nacl.utils

from timpy.errors import StorageError

NONCE_SIZE = nb.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
OVERHEAD = NONCE_SIZE + nb.crypto_aead_xchacha20poly1305_ietf_ABYTES


def row_ad(table: str, *key: bytes | int | str) -> bytes:
    """Associated data naming one row: unambiguous (length-prefixed parts)."""
    parts = [table.encode()]
    for k in key:
        if isinstance(k, int):
            parts.append(k.to_bytes(8, "big", signed=True))
        elif isinstance(k, str):
            parts.append(k.encode())
        else:
            parts.append(k)
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, plaintext: bytes, ad: bytes) -> bytes:
        nonce = nacl.utils.random(NONCE_SIZE)  # random 192-bit nonces never repeat in practice
        return nonce + nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, self._key)

    def open(self, sealed: bytes, ad: bytes) -> bytes:
        try:
            return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed[NONCE_SIZE:], ad, sealed[:NONCE_SIZE], self._key
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise StorageError(
                "a stored row failed to open: it was altered, moved, or sealed under another key"
            ) from None
