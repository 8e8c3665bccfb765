"""Sealing of stored payloads with XChaCha20-Poly1305.

The associated data names the row a payload belongs to (table, key, and
sequence where there is one), so a sealed value copied into another row, or
two rows swapped, fail to open instead of showing the wrong data.
"""

from __future__ import annotations

from collections import OrderedDict

import nacl.exceptions
import nacl.utils

from timpy.crypto import aead
from timpy.errors import StorageError

NONCE_SIZE = aead.NONCE_SIZE
OVERHEAD = NONCE_SIZE + aead.TAG_SIZE


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


OPENED_KEPT = 16_384  # recently sealed or opened values kept, in memory only (at most about 80 MiB)
KEPT_SIZE_MAX = 2048  # larger values (file chunks, large records) are never kept


_MESSAGES = b"\x00\x08messages"


def message_ad(conv_id: bytes, seq: int) -> bytes:
    """``row_ad("messages", conv_id, seq)``, built without the general loop
    (every message row opened or sealed builds one)."""
    return b"".join((_MESSAGES, len(conv_id).to_bytes(2, "big"), conv_id, b"\x00\x08", seq.to_bytes(8, "big", signed=True)))


class Sealer:
    """Seals and opens stored payloads. It keeps the last ``OPENED_KEPT``
    values of at most ``KEPT_SIZE_MAX`` bytes it sealed or opened, in memory, keyed by the exact sealed bytes
    and associated data: a node reads its newest messages again and again
    (the conversation list's unread counts, search indexing, history), and
    opening one was about a tenth of a node's CPU. Only the very bytes that
    were sealed here or opened here before, under the same associated data,
    are answered from it, so it changes no outcome: anything else is opened
    (and authenticated) as before. Nothing of it is written anywhere."""

    def __init__(self, key: bytes, kept: int = OPENED_KEPT) -> None:
        self._key = key
        self._kept = kept
        # An OrderedDict, not a dict: taking a plain dict's first key after many deletions from its front walks
        # every deleted slot since its last resize (it was 9% of a node's CPU under the flood).
        self._opened: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()

    def _keep(self, sealed: bytes, ad: bytes, plaintext: bytes) -> None:
        opened = self._opened
        opened[(sealed, ad)] = plaintext
        if len(opened) > self._kept:
            try:  # the oldest goes (store threads share it: a race only keeps one more or one less)
                opened.popitem(last=False)
            except KeyError:
                pass

    def seal(self, plaintext: bytes, ad: bytes) -> bytes:
        nonce = nacl.utils.random(NONCE_SIZE)  # random 192-bit nonces never repeat in practice
        sealed = nonce + aead.encrypt(bytes(plaintext), ad, nonce, self._key)
        if self._kept and len(plaintext) <= KEPT_SIZE_MAX:
            self._keep(sealed, ad, bytes(plaintext))
        return sealed

    def open(self, sealed: bytes, ad: bytes) -> bytes:
        if self._kept:
            got = self._opened.get((sealed, ad))
            if got is not None:
                return got
        try:
            plaintext = aead.decrypt(sealed[NONCE_SIZE:], ad, sealed[:NONCE_SIZE], self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise StorageError(
                "a stored row failed to open: it was altered, moved, or sealed under another key"
            ) from None
        if self._kept and len(plaintext) <= KEPT_SIZE_MAX:
            self._keep(bytes(sealed), ad, plaintext)
        return plaintext
