import os
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.store.backends import dump_tables
from tests.support.repositories import CONV, KEY, A, B, C, accounts, fresh, msg, repo
from timpy.crypto.seal import Sealer
from timpy.errors import Code, KeyMismatchError, RequestError, StorageError
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=8), min_size=1, max_size=8))
def test_sequences_are_gap_free_and_retries_are_idempotent(engine, batches):
    r = fresh(engine)
    accounts(r, A, B)
    first_seq: dict[int, int] = {}
    for batch in batches:
        results = r.append_messages([msg(d) for d in batch])
        for d, res in zip(batch, results, strict=True):
            if d in first_seq:
                assert res.duplicate and res.seq == first_seq[d] and not res.inbox
            else:
                assert not res.duplicate
                first_seq[d] = res.seq
    seqs = sorted(first_seq.values())
    assert seqs == list(range(1, len(seqs) + 1))
    rows, more = r.read_history(CONV, 0, None, 1000)
    assert [m.seq for m in rows] == seqs and not more
    # every member's inbox holds each message once, in sequence order
    for user in (A, B):
        inbox = r.read_inbox(user, 0, 1000)
        assert [e.pos for e in inbox] == list(range(1, len(seqs) + 1))
        assert [e.message.seq for e in inbox] == seqs


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 40), limit=st.integers(1, 12), data=st.data())
def test_history_pages_cover_everything_in_both_directions(engine, n, limit, data):
    r = fresh(engine)
    accounts(r, A, B)
    if n:
        r.append_messages([msg(i) for i in range(n)])
    # backwards from the latest
    got, before = [], 0
    for _ in range(n + 2):
        rows, more = r.read_history(CONV, before, None, limit)
        got = [m.seq for m in rows] + got
        if not more:
            break
        before = rows[0].seq
    assert got == list(range(1, n + 1))
    # forwards from a point
    start = data.draw(st.integers(0, n))
    got, after = [], start
    for _ in range(n + 2):
        rows, more = r.read_history(CONV, 0, after, limit)
        got += [m.seq for m in rows]
        if not more:
            break
        after = rows[-1].seq
    assert got == list(range(start + 1, n + 1))


def test_unknown_member_aborts_the_whole_batch(engine):
    r = fresh(engine)
    accounts(r, A, B)
    with pytest.raises(RequestError) as e:
        r.append_messages([msg(1), msg(2, members=(A, C))])
    assert e.value.code == Code.NO_SUCH_USER
    assert r.read_history(CONV, 0, None, 10) == ([], False)


def test_inbox_heads_kept_between_batches_give_way_to_the_stored_ones(engine):
    """A store keeps the inbox heads its last batch committed instead of
    reading them again; when they moved meanwhile (another writer on the same
    database, or an undo), the batch is stored from the heads as stored:
    gap-free, nothing placed twice."""
    r = fresh(engine)
    other = Repository(engine, Sealer(KEY))
    accounts(r, A, B)
    assert r.append_messages([msg(1)])[0].inbox == {A: 1, B: 1}
    assert other.append_messages([msg(2)])[0].inbox == {A: 2, B: 2}  # r's kept heads are now behind
    assert r.append_messages([msg(3)])[0].inbox == {A: 3, B: 3}
    assert r.inbox_head(A) == 3
    assert other.append_messages([msg(4)])[0].inbox == {A: 4, B: 4}
    other.undo_writes([(CONV, 4, (4).to_bytes(16, "big"))], [(A, 4, CONV, 4), (B, 4, CONV, 4)])
    assert r.append_messages([msg(5)])[0].inbox == {A: 4, B: 4}  # r had kept 3, stored was 4, then 3 again
    assert [e.pos for e in r.read_inbox(A, 0, 10)] == [1, 2, 3, 4]
    assert [(e.message.seq) for e in r.read_inbox(B, 0, 10)] == [1, 2, 3, 4]


def test_duplicate_account_is_refused(engine):
    r = fresh(engine)
    accounts(r, A)
    with pytest.raises(RequestError) as e:
        accounts(r, A)
    assert e.value.code == Code.USER_EXISTS


def test_terminal_cursors(engine):
    r = fresh(engine)
    accounts(r, A, B)
    r.append_messages([msg(i) for i in range(5)])
    assert r.open_terminal(B, b"phone".ljust(16), 1) == 0
    r.append_messages([], {(B, b"phone".ljust(16)): 3})
    r.append_messages([], {(B, b"phone".ljust(16)): 2})  # never moves back
    assert r.open_terminal(B, b"phone".ljust(16), 2) == 3
    # a new device starts where the furthest-behind device is
    assert r.open_terminal(B, b"laptop".ljust(16), 3) == 3
    assert [e.pos for e in r.read_inbox(B, 3, 10)] == [4, 5]
    # several cursors in one batch: each moves forward or stays, on its own
    r.append_messages([], {(B, b"phone".ljust(16)): 5, (B, b"laptop".ljust(16)): 1, (A, b"none".ljust(16)): 4})
    assert (r.open_terminal(B, b"phone".ljust(16), 4), r.open_terminal(B, b"laptop".ljust(16), 4)) == (5, 3)
    assert r.count_terminals(A) == 0  # a cursor for a terminal that does not exist makes none


def test_wrong_key_is_refused_clearly(tmp_path):
    path = tmp_path / "db.sqlite3"
    repo(path)
    with pytest.raises(KeyMismatchError, match="cluster key"):
        repo(path, key=bytes(32))


def test_swapped_rows_fail_to_open(tmp_path):
    path = tmp_path / "db.sqlite3"
    r = repo(path)
    accounts(r, A, B)
    r.append_messages([msg(1, body=b"one"), msg(2, body=b"two")])
    db = sqlite3.connect(path)
    c1, c2 = (row[0] for row in db.execute("select content from messages order by seq"))
    db.execute("update messages set content = ? where seq = 1", (c2,))
    db.commit()
    db.close()
    with pytest.raises(StorageError):
        r.read_history(CONV, 0, None, 10)


def test_revocations_expire(engine):
    r = fresh(engine)
    r.revoke_token(b"t" * 16, 100)
    r.revoke_token(b"t" * 16, 100)
    r.revoke_token(b"u" * 16, 300)
    assert r.live_revocations(50) == {b"t" * 16: 100, b"u" * 16: 300}
    assert r.live_revocations(200) == {b"u" * 16: 300}


def test_nothing_readable_at_rest(tmp_path):
    path = tmp_path / "db.sqlite3"
    r = repo(path)
    accounts(r, A, B)
    r.append_messages([msg(1, body=b"the-secret-plan-zebra")])
    r.engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"the-secret-plan-zebra" not in raw
    assert os.path.getsize(path) > 0


def test_wrong_key_is_refused_on_every_backend(engine):
    fresh(engine)
    with pytest.raises(KeyMismatchError):
        Repository(engine, Sealer(bytes(32))).create_schema()


def test_no_name_or_body_in_any_table(engine):
    """A dump of every table, on every backend, shows nothing readable."""

    from timpy.crypto.blind import BlindIndexer
    from timpy.im import ids

    r = fresh(engine)
    ix = BlindIndexer(KEY)
    zed, quin = ids.user_id(ix, "zebulon"), ids.user_id(ix, "quentin")
    r.create_account(zed, b"argon-hash-of-password", b"name=zebulon")
    r.create_account(quin, b"argon-hash-of-password", b"name=quentin")
    conv = ids.direct_conversation(ix, zed, quin)
    r.append_messages([NewMessage(conv, (zed, quin), zed, b"d" * 16, 1, b"zebulon says: meet at the lighthouse")])
    dump = dump_tables(engine)
    assert len(dump) > 100
    for secret in (b"zebulon", b"quentin", b"lighthouse", b"argon-hash"):
        assert secret not in dump


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), min_size=1, max_size=90), min_size=1, max_size=4
))
def test_duplicates_are_found_per_conversation_in_batches_of_any_size(engine, batches):
    """A dedup index is a duplicate only within its own conversation, however
    many pairs one batch looks up (more than one lookup statement's worth)."""
    r = fresh(engine)
    accounts(r, A, B)
    convs = [bytes([65 + k]) * 16 for k in range(6)]
    first: dict[tuple[int, int], int] = {}
    for batch in batches:
        results = r.append_messages([msg(d, conv=convs[c]) for c, d in batch])
        for key, res in zip(batch, results, strict=True):
            if key in first:
                assert res.duplicate and res.seq == first[key]
            else:
                assert not res.duplicate
                first[key] = res.seq
    for k, _conv in enumerate(convs):
        seqs = sorted(seq for (c, _), seq in first.items() if c == k)
        assert seqs == list(range(1, len(seqs) + 1))


def test_a_sqlite_file_is_opened_in_wal_mode_with_a_memory_map_and_a_long_checkpoint_interval(tmp_path):
    from timpy.store.engine import SQLITE_CHECKPOINT_PAGES, sqlite_engine

    engine = sqlite_engine(tmp_path / "t.sqlite3")
    with engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal" and pragma("synchronous") == 2  # FULL
        assert pragma("mmap_size") > 1 << 30 and pragma("wal_autocheckpoint") == SQLITE_CHECKPOINT_PAGES
    engine.dispose()


def test_with_background_checkpoints_the_writers_own_checkpoint_is_only_a_backstop(tmp_path):
    from timpy.store.engine import (
        SQLITE_BACKSTOP_PAGES,
        SQLITE_CHECKPOINT_PAGES,
        SQLITE_WAL_KEPT_BYTES,
        sqlite_engine,
    )

    engine = sqlite_engine(tmp_path / "t.sqlite3", background_checkpoints=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == SQLITE_BACKSTOP_PAGES
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == SQLITE_WAL_KEPT_BYTES
    assert SQLITE_BACKSTOP_PAGES > SQLITE_CHECKPOINT_PAGES
    engine.dispose()


def _wal_state(path) -> tuple[int, int]:
    """(frames in the WAL, frames of it copied into the file), read by a passive checkpoint of nothing new."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, done
    finally:
        conn.close()


def test_the_background_checkpointer_copies_the_wal_into_the_file_beside_a_writer(tmp_path):
    from timpy.store.engine import WalCheckpointer, sqlite_engine

    path = tmp_path / "t.sqlite3"
    r = Repository(sqlite_engine(path, background_checkpoints=True), Sealer(KEY))
    r.create_schema()
    accounts(r, A, B)
    r.append_messages([msg(d) for d in range(40)])
    checkpointer = WalCheckpointer(path)
    try:
        copied = checkpointer.checkpoint()
        assert copied > 0 and checkpointer.runs == 1 and checkpointer.pages == copied
        frames, done = _wal_state(path)
        assert frames == done > 0  # every frame of the WAL is in the file now
        assert checkpointer.checkpoint() == 0  # nothing new
        # A writer in the middle of a transaction is neither waited for nor
        # disturbed: a passive checkpoint copies what is committed only.
        with r.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE accounts SET inbox_head = inbox_head WHERE user_id = ?", (A,))
            checkpointer.checkpoint()
        more = r.append_messages([msg(d) for d in range(40, 60)])
        assert [m.seq for m in more] == list(range(41, 61))
        assert checkpointer.checkpoint() > 0
    finally:
        checkpointer.close()
        r.close()
    # Everything reads back, in order, once reopened.
    again = Repository(sqlite_engine(path), Sealer(KEY))
    rows, more_left = again.read_history(CONV, 0, None, 100)
    assert [m.seq for m in rows] == list(range(1, 61)) and not more_left
    again.close()


def test_the_checkpointer_refuses_an_unknown_sync_mode(tmp_path):
    from timpy.store.engine import WalCheckpointer

    with pytest.raises(ValueError, match="sqlite_synchronous"):
        WalCheckpointer(tmp_path / "t.sqlite3", "SOMETIMES")


def test_a_wal_that_starts_again_is_cut_back_to_its_kept_size(tmp_path, monkeypatch):
    from timpy.store import engine as e

    monkeypatch.setattr(e, "SQLITE_WAL_KEPT_BYTES", 64 * 1024)
    path = tmp_path / "t.sqlite3"
    r = Repository(e.sqlite_engine(path, background_checkpoints=True), Sealer(KEY))
    r.create_schema()
    accounts(r, A, B)
    r.append_messages([msg(d, body=bytes(600)) for d in range(400)])
    wal = tmp_path / "t.sqlite3-wal"
    assert wal.stat().st_size > 64 * 1024
    checkpointer = e.WalCheckpointer(path)
    try:
        assert checkpointer.checkpoint() > 0
        r.append_messages([msg(400)])  # the next write starts the WAL again from its beginning
        assert wal.stat().st_size <= 64 * 1024
    finally:
        checkpointer.close()
        r.close()


def test_a_wal_below_the_backstop_is_rewritten_in_place_not_cut_back(tmp_path):
    """SQLite cuts a WAL that starts again back to ``SQLITE_WAL_KEPT_BYTES``:
    at the backstop's full size (header, then a 24-byte header and a page
    per frame), a WAL the writer's backstop checkpoint keeps below it is
    rewritten in place, never cut and grown again."""
    from timpy.store import engine as e

    path = tmp_path / "t.sqlite3"
    r = Repository(e.sqlite_engine(path, background_checkpoints=True), Sealer(KEY))
    try:
        r.create_schema()
        with r.engine.connect() as conn:
            page = conn.exec_driver_sql("PRAGMA page_size").scalar()
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == e.SQLITE_BACKSTOP_PAGES
        assert e.SQLITE_WAL_KEPT_BYTES >= 32 + e.SQLITE_BACKSTOP_PAGES * (page + 24)
    finally:
        r.close()
