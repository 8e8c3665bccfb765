"""Blind indexes: keyed BLAKE2b of a value, so equal values can be found
without the value being stored. Without the key an index reveals nothing
but equality."""

from __future__ import annotations

import hashlib

INDEX_SIZE = 16


class BlindIndexer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def index(self, purpose: str, *parts: bytes | str) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=INDEX_SIZE, person=b"timpy-blind-v1")
        h.update(purpose.encode())
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        return h.digest()
