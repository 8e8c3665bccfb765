"""Sealing of stored payloads with XChaCha20-Poly1305.

The associated data names the row a payload belongs to (table, key, and
sequence where there is one), so a sealed value copied into another row, or
two rows swapped, fail to open instead of showing the wrong data.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import nacl.exceptions

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


NONCES_DRAWN = 256  # nonces drawn from the OS at once, per thread


class _Nonces(threading.local):
    """Random nonces, drawn from the OS (``os.urandom``) ``NONCES_DRAWN`` at a
    time, per thread: each system call lets go of the interpreter lock and
    must take it back, and the store thread seals a message at a time while
    the loop holds the lock (py-spy found the one call per sealed message
    in about 3% of a node's samples under the flood). A block is per thread
    and per process (a forked child draws its own), and each nonce in it is
    used once."""

    def __init__(self) -> None:
        self.block = b""
        self.at = 0

    def take(self) -> bytes:
        at = self.at
        if at + NONCE_SIZE > len(self.block):
            self.block, at = os.urandom(NONCE_SIZE * NONCES_DRAWN), 0
        self.at = at + NONCE_SIZE
        return self.block[at:at + NONCE_SIZE]

    def forget(self) -> None:
        self.block, self.at = b"", 0


_nonces = _Nonces()
os.register_at_fork(after_in_child=_nonces.forget)  # the child's one thread: the parent's block is never used again


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
        nonce = _nonces.take()  # random 192-bit nonces never repeat in practice
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
