"""The statements a node runs for every write batch read only what they need,
however long the history: each search of ``messages`` that reads its rows is
bounded by a seq or a client id, not every message of a conversation. Checked
on the plans SQLite makes for the statements actually run (a trace of them),
so a statement that would slow down as history grows fails here, not only
in a benchmark. (With a long history, indexing for search once read every
message of each conversation it touched to keep the one or two new ones.)"""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy import event

from timpy.crypto.seal import Sealer
from timpy.im import kinds
from timpy.im.search import plan_for
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import KIND_NORMAL, pack_content

ANN, BOB = b"a" * 16, b"b" * 16
CONVS = [bytes([65 + k]) * 16 for k in range(3)]
HOT = ("messages", "inbox", "search_postings", "search_docs", "search_heads")


def _batch(n0: int, per_conv: int) -> list[NewMessage]:
    out = []
    for conv in CONVS:
        for k in range(per_conv):
            n = n0 + k
            out.append(NewMessage(
                conv_id=conv, members=(ANN, BOB), sender_id=ANN, dedup=conv[:8] + n.to_bytes(8, "big"),
                created_ms=1_700_000_000_000 + n,
                content=pack_content(f"c{n}", "ann", "bob", KIND_NORMAL, f"otter seal {n}".encode(), {}),
            ))
    return out


def _bad_steps(db: str, sql: str) -> list[str]:
    """Plan steps of ``sql`` that read a hot table whole, or read the rows of
    ``messages`` for a conversation without bounding them by seq or client id."""
    with sqlite3.connect(db) as conn:
        steps = [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    bad = []
    for step in steps:
        words = step.split()
        if words[:1] == ["SCAN"] and len(words) > 1 and words[1] in HOT:
            bad.append(step)
        elif (words[:2] == ["SEARCH", "messages"] or (words[:1] == ["SEARCH"] and " m USING" in step)) \
                and "COVERING" not in step and "seq" not in step and "dedup" not in step:
            bad.append(step)
        elif (words[:2] == ["SEARCH", "inbox"] or (words[:1] == ["SEARCH"] and " i USING" in step)) \
                and "conv_id=" not in step and "pos" not in step:
            bad.append(step)  # a user's whole inbox, not one conversation's entries
    return bad


def _traced(repo: Repository) -> list[str]:
    statements: list[str] = []
    event.listen(repo.engine, "checkout", lambda dbapi, _rec, _proxy: dbapi.set_trace_callback(statements.append))
    return statements


def _check(db: str, statements: list[str], must: str) -> None:
    selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert any(must in q for q in selects), f"no statement on {must}: the trace caught nothing"
    bad = {q: _bad_steps(db, q) for q in selects}
    assert not {q: b for q, b in bad.items() if b}


def test_a_write_batch_and_its_search_indexing_read_no_conversation_whole(tmp_path):
    db = str(tmp_path / "plans.sqlite3")
    repo = Repository(sqlite_engine(tmp_path / "plans.sqlite3"), Sealer(os.urandom(32)), kinds.effect_of)
    plans = [(c, plan_for(b"k" * 16)) for c in CONVS]
    try:
        repo.create_schema()
        for u in (ANN, BOB):
            repo.create_account(u, b"secret", b"profile")
        repo.write_batch(_batch(1, 40))  # a history
        assert repo.search_index_many(plans, 10_000) == []
        statements = _traced(repo)
        repo.write_batch(_batch(100, 1))  # a flood's batch: one new message in each conversation
        assert repo.search_index_many(plans, 10_000) == []
        repo.write_batch(_batch(200, 2))
        assert repo.search_index_many(plans, 10_000) == []
    finally:
        repo.close()
    _check(db, statements, "search_heads")


def test_a_conversation_list_notice_reads_one_conversation_at_a_time(tmp_path):
    """The live notices' reads (``conversation_rows``, run for about every
    message a live user gets): each conversation's own entries, never the
    user's whole inbox, however many conversations it has."""
    db = str(tmp_path / "plans.sqlite3")
    repo = Repository(sqlite_engine(tmp_path / "plans.sqlite3"), Sealer(os.urandom(32)), kinds.effect_of)
    try:
        repo.create_schema()
        for u in (ANN, BOB):
            repo.create_account(u, b"secret", b"profile")
        repo.write_batch(_batch(1, 40))
        statements = _traced(repo)
        rows = repo.conversation_rows(BOB, CONVS, 16, 1000)
        assert [len(r.unread) for r in rows] == [40, 40, 40]
        known = {r.conv_id: (r.read_seq, *r.counted) for r in rows}
        repo.write_batch(_batch(100, 1))
        again = repo.conversation_rows(BOB, CONVS, 16, 1000, known)
        assert [len(r.unread) for r in again] == [1, 1, 1]  # only the message after the count
    finally:
        repo.close()
    _check(db, statements, "read_marks")
