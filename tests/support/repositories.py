"""Store repositories for the store tests: an in-memory SQLite one, an emptied
one on any backend's engine (the ``engine`` fixture of tests/store/conftest.py),
accounts and messages to fill them."""

from __future__ import annotations

from tests.store.backends import clear
from timpy.crypto.seal import Sealer
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage

KEY = bytes(range(32))
A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
CONV = b"x" * 16


def repo(path=None, key=KEY) -> Repository:
    r = Repository(sqlite_engine(path), Sealer(key))
    r.create_schema()
    return r


def fresh(engine, key=KEY) -> Repository:
    """A repository on ``engine`` with every table empty."""
    r = Repository(engine, Sealer(key))
    r.create_schema()
    clear(engine)
    r.create_schema()
    return r


def accounts(r: Repository, *ids: bytes) -> None:
    for u in ids:
        r.create_account(u, b"secret", b"profile")


def msg(dedup: int, conv: bytes = CONV, members=(A, B), body: bytes = b"hi") -> NewMessage:
    return NewMessage(conv, members, members[0], dedup.to_bytes(16, "big"), 1000 + dedup, body)
