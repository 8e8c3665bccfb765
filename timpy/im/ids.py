"""Names and the opaque ids derived from them.

A user's id is the blind index of the normalized name, so any node that
holds the cluster key finds a user's rows (and, in a cluster, its owner)
without a lookup, and the database never holds the name itself.
"""

from __future__ import annotations

import re
import unicodedata

from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError

MAX_NAME = 64
MAX_CLIENT_ID = 64
MAX_DEVICE = 64
_NAME_RE = re.compile(r"^[\w.\-]+$")


def normalize_name(name: str) -> str:
    """The canonical form of a user name (NFKC, case-folded); refuse bad names."""
    if not isinstance(name, str) or not name:
        raise RequestError("a user name is required", Code.INVALID_NAME)
    norm = unicodedata.normalize("NFKC", name).casefold()
    if len(norm) > MAX_NAME:
        raise RequestError(f"a user name has at most {MAX_NAME} characters", Code.INVALID_NAME)
    if not _NAME_RE.match(norm):
        raise RequestError(
            "a user name may hold letters, digits, '_', '.' and '-' only", Code.INVALID_NAME
        )
    return norm


def user_id(indexer: BlindIndexer, name: str) -> bytes:
    return indexer.kept(("user", name), lambda: indexer.index("user", normalize_name(name)))


def direct_conversation(indexer: BlindIndexer, a: bytes, b: bytes) -> bytes:
    """The id of the 1:1 conversation of two users (the same from either side)."""
    lo, hi = (a, b) if a <= b else (b, a)
    return indexer.kept(("conv-direct", lo, hi), lambda: indexer.index("conv-direct", lo, hi))


def dedup_index(indexer: BlindIndexer, sender: bytes, client_id: str) -> bytes:
    return indexer.index("dedup", sender, client_id)


def device_index(indexer: BlindIndexer, user: bytes, device: str) -> bytes:
    return indexer.index("device", user, device)


def conversation_text(conv_id: bytes) -> str:
    return conv_id.hex()


def parse_conversation(text: str) -> bytes:
    try:
        conv = bytes.fromhex(text)
    except ValueError:
        conv = b""
    if len(conv) != 16:
        raise RequestError("not a conversation id", Code.BAD_REQUEST)
    return conv
