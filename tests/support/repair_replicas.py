"""Two in-memory replicas of one conversation and one repair pass between
them, as ``Replicator._repair_key`` runs it on the store side."""

from __future__ import annotations

from timpy.crypto.seal import Sealer
from timpy.store import digest as d
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository

KEY = bytes(range(32))
A, B, CONV = b"a" * 16, b"b" * 16, b"c" * 16


def replica() -> Repository:
    repo = Repository(sqlite_engine(None), Sealer(KEY))
    repo.create_schema()
    for u in (A, B):
        repo.create_account(u, b"secret", b"profile")
    return repo


def one_pass(a: Repository, b: Repository) -> list[int]:
    """The store side of ``Replicator._repair_key`` for a conversation, run by ``a``."""
    mine, theirs = a.repair_buckets("conv", CONV), b.repair_buckets("conv", CONV)
    assert mine is not None and theirs is not None
    differ = d.diff_buckets(mine[1], theirs[1])
    slots = d.diff_slots(a.repair_slots("conv", CONV, differ), b.repair_slots("conv", CONV, differ))
    conflicts = set(slots.conflicts)
    if slots.fetch:
        a.apply_repair("conv", CONV, b.repair_rows("conv", CONV, slots.fetch, False),
                       [i for i in slots.fetch if i in conflicts])
    if slots.send:
        b.apply_repair("conv", CONV, a.repair_rows("conv", CONV, slots.send, False),
                       [i for i in slots.send if i in conflicts])
    return sorted(conflicts)
