"""Password hashing with argon2id (libsodium through PyNaCl).

Hashing is slow on purpose (tens of milliseconds, 64 MiB by default): call it
from a worker thread, never on the trio loop.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.pwhash


def hash_password(password: str, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=opslimit, memlimit=memlimit)


def verify_password(stored: bytes, password: str) -> bool:
    try:
        return nacl.pwhash.argon2id.verify(stored, password.encode())
    except nacl.exceptions.InvalidkeyError:
        return False
