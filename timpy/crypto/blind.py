"""Blind indexes: keyed BLAKE2b of a value, so equal values can be found
without the value being stored. Without the key an index reveals nothing
but equality."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable

INDEX_SIZE = 16
PERSON = b"timpy-blind-v1"
KEPT_MAX = 65_536  # indexes kept in memory by ``kept`` (a few MiB at most)


class BlindIndexer:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._kept: dict[Hashable, bytes] = {}
        # The keyed, personalized state before any input, copied for each
        # index: setting the key up again (a block of its own) was a quarter
        # of an index's time, asked once or twice per message sent.
        self._start = hashlib.blake2b(key=key, digest_size=INDEX_SIZE, person=PERSON)

    def kept(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """``make()`` (an index), kept in memory under ``key``: for the few
        values a node indexes again and again (user names, conversations'
        pairs), each a keyed hash of a few microseconds asked several times
        per message. Bounded; nothing of it is stored."""
        got = self._kept.get(key)
        if got is None:
            got = make()
            if len(self._kept) >= KEPT_MAX:
                self._kept.clear()
            self._kept[key] = got
        return got

    def index(self, purpose: str, *parts: bytes | str) -> bytes:
        """Keyed BLAKE2b (16 bytes, personalization ``PERSON``) of the purpose,
        then each part as a 4-byte length and its bytes (a str in UTF-8).
        Stored ids are these values: the input's layout never changes."""
        chunks = [purpose.encode()]
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            chunks.append(len(data).to_bytes(4, "big"))
            chunks.append(data)
        h = self._start.copy()
        h.update(b"".join(chunks))
        return h.digest()
