"""Shared-backend fencing (issue 15): two repositories on one database (two
nodes that each believe they own a conversation) race to append to the same
conversation and the same inboxes. No (conversation, seq) or (user, inbox
position) is ever committed twice; the loser of a race gets a retryable
UNAVAILABLE error and nothing of its batch is stored. Real SQLite files,
PostgreSQL and MariaDB (the servers skip when absent, never under CI=true)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.store.backends import make_engine
from timpy.crypto.seal import Sealer
from timpy.errors import Code
from timpy.store import schema as s
from timpy.store.engine import sqlite_engine, url_engine
from timpy.store.features.messages import ConcurrentWriteError
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage

KEY = bytes(range(32))
A, B = b"a" * 16, b"b" * 16
ROUNDS = 60
PER_BATCH = 4


@pytest.fixture(params=["sqlite-file", "postgresql", "mariadb"])
def two_repositories(request, tmp_path: Path):
    """Two repositories, each with its own engine (connection pool), on one database."""
    first = make_engine(request.param, tmp_path)  # a clean database
    second = sqlite_engine(tmp_path / "db.sqlite3") if request.param == "sqlite-file" else url_engine(str(first.url))
    repos = [Repository(e, Sealer(KEY)) for e in (first, second)]
    repos[0].create_schema()
    repos[1].create_schema()
    for u in (A, B):
        repos[0].create_account(u, b"secret", b"profile")
    yield repos
    for e in (first, second):
        e.dispose()


def new(node: int, round_: int, i: int, conv: bytes) -> NewMessage:
    dedup = bytes([node, i]) + round_.to_bytes(14, "big")
    return NewMessage(conv, (A, B), A, dedup, round_, f"n{node} r{round_} m{i}".encode())


def test_two_writers_on_one_database_never_commit_one_position_twice(two_repositories):
    repos = two_repositories
    won: dict[bytes, int] = {}  # dedup -> seq acknowledged
    lost: list[bytes] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(node: int, round_: int, conv: bytes, start: threading.Barrier) -> None:
        batch = [new(node, round_, i, conv) for i in range(PER_BATCH)]
        start.wait()
        try:
            written = repos[node].write_batch(batch)
        except ConcurrentWriteError as exc:
            assert exc.code == Code.UNAVAILABLE and "send again" in exc.text
            with lock:
                lost.extend(m.dedup for m in batch)
            return
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            return
        with lock:
            for m, a in zip(batch, written.appended, strict=True):
                won[m.dedup] = a.seq

    for round_ in range(ROUNDS):
        # every fourth round a conversation neither writer has seen yet
        conv = b"c" * 15 + bytes([round_ // 4 % 256])
        start = threading.Barrier(2)
        threads = [threading.Thread(target=writer, args=(n, round_, conv, start)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors

    m, i = s.messages, s.inbox
    with repos[0].engine.connect() as conn:
        rows = {bytes(r.dedup): (bytes(r.conv_id), int(r.seq)) for r in conn.execute(select(m.c.dedup, m.c.conv_id, m.c.seq))}
        inbox = [(bytes(r.user_id), int(r.pos), bytes(r.conv_id), int(r.seq)) for r in conn.execute(select(i))]
        heads = dict(conn.execute(select(s.conversations.c.conv_id, s.conversations.c.last_seq)).all())
        inbox_heads = dict(conn.execute(select(s.accounts.c.user_id, s.accounts.c.inbox_head)).all())
        per_conv = dict(conn.execute(select(m.c.conv_id, func.count()).group_by(m.c.conv_id)).all())
    # Exactly the acknowledged messages are stored, each at the seq it was acknowledged with.
    assert {d: seq for d, (_c, seq) in rows.items()} == won
    assert not set(lost) & set(rows)  # nothing of a lost batch was stored
    assert len(won) + len(lost) == ROUNDS * 2 * PER_BATCH
    # Every conversation's sequence is gap-free and its head is its last seq.
    for conv, count in per_conv.items():
        seqs = sorted(seq for c, seq in rows.values() if c == bytes(conv))
        assert seqs == list(range(1, count + 1))
        assert heads[conv] == count
    # Every inbox is gap-free, each message in it once per member.
    for user in (A, B):
        positions = sorted(pos for u, pos, *_ in inbox if u == user)
        assert positions == list(range(1, len(won) + 1))
        assert inbox_heads[user] == len(won)
        assert sorted((c, q) for u, _p, c, q in inbox if u == user) == sorted(rows.values())
