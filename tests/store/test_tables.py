"""The registry of copied tables: every table of the schema is declared (or
said to belong to no key), and a key's copies carry every declared table,
cross the wire whole, and leave the copy with the same digests and move
statistics as the original, on every backend."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.store.backends import BACKENDS, make_engine
from timpy.crypto.seal import Sealer
from timpy.store import schema
from timpy.store.engine import sqlite_engine
from timpy.store.features.attachments import AttachmentRow
from timpy.store.outbox import NewEvent, Outbox, Outcome
from timpy.store.repository import Repository
from timpy.store.rows import Copies, NewMessage
from timpy.store.tables import LOCAL_TABLES, TABLES

KEY = bytes(range(32))
A, B = b"a" * 16, b"b" * 16
CONV, GROUP = b"x" * 16, b"g" * 16
FILE, GONE = b"f" * 16, b"z" * 16  # an attachment, and one deleted (a tombstone)


def test_every_table_of_the_schema_is_declared_once():
    declared = [t.table for t in TABLES] + [x for t in TABLES for x in t.also] + list(LOCAL_TABLES)
    assert len(declared) == len(set(declared))
    assert set(declared) == set(schema.metadata.tables.values())


def test_copies_name_the_declared_tables_and_pack_in_wire_order():
    copies = Copies(reads=[(A, CONV, 3)])
    assert copies.reads == [(A, CONV, 3)] and copies.inbox == [] and copies
    assert not Copies()
    assert len(copies.pack()) == len(TABLES)
    assert copies.pack()[next(t.wire for t in TABLES if t.name == "reads")] == [(A, CONV, 3)]
    with pytest.raises(TypeError, match="no table named"):
        Copies(reactions=[])
    with pytest.raises(AttributeError):
        copies.reactions  # noqa: B018
    with pytest.raises(ValueError, match="copies of 2 tables"):
        Copies.unpack([[], []])


def populated() -> Repository:
    """One database holding a row of every copied table."""
    r = Repository(sqlite_engine(None), Sealer(KEY))
    r.create_schema()
    r.create_account(A, b"secret", b"profile")
    r.create_account(B, b"secret", b"profile")
    r.append_messages([NewMessage(CONV, (A, B), A, b"d" * 16, 1000, b"hello")])
    r.put_group(GROUP, b"group state", [A, B], 0)
    r.append_messages([NewMessage(GROUP, (A, B), B, b"e" * 16, 1001, b"to the group")])
    r.open_terminal(A, b"t" * 16, 5000)
    r.put_record(A, "roster", b"roster of a", 0)
    r.put_record(CONV, "pair", b"pair state", 0)
    r.mark_read(A, CONV, 1)
    r.put_attachment(AttachmentRow(FILE, A, b"name, type, size, hash", 4, 3, False, 7000))
    for index in (2, 0, 1):  # in any order
        r.put_chunk(FILE, index, bytes([index]) * 4)
    r.complete_attachment(FILE)
    r.add_readers(FILE, [A, B])
    r.add_ref(FILE, CONV, 1)
    r.put_attachment(AttachmentRow(GONE, B, b"gone", 4, 1, True, 7001))
    r.put_chunk(GONE, 0, b"gone")
    r.delete_attachment(GONE)
    outbox = Outbox(r.engine, Sealer(KEY))
    outbox.add([NewEvent("biz", "1" * 32, "message.stored", b"{}", "conv", CONV),
                NewEvent("biz", "2" * 32, "user.login", b"{}", "user", A)], 9000)
    dead = outbox.due("biz", 9000, 10, lambda kind, key: kind == "user")
    outbox.settle([Outcome(dead[0].id, False, 9, 0, True, "HTTP status 500")], 9001)
    return r


KINDS = (("conv", [CONV, GROUP]), ("user", [A]), ("att", [FILE, GONE]))


def key_copies(r: Repository) -> Copies:
    copies = Copies()
    for conv in (CONV, GROUP):
        copies.merge(r.conversation_copies(conv, 0, 100))
    copies.merge(r.user_copies(A, 0, 100))
    for att in (FILE, GONE):
        copies.merge(r.attachment_copies(att, -1, 100))
    return copies


def test_the_copies_of_keys_carry_every_declared_table():
    copies = key_copies(populated())
    assert [t.name for t in TABLES if not t.derived and not getattr(copies, t.name)] == []
    assert [t.name for t in TABLES if t.derived and getattr(copies, t.name)] == []  # rebuilt where held, not copied
    assert Copies.unpack(msgpack.unpackb(msgpack.packb(copies.pack(), use_bin_type=True), raw=False)) == copies


@pytest.fixture(params=BACKENDS)
def engine(request, tmp_path):
    e = make_engine(request.param, tmp_path)
    yield e
    e.dispose()


def test_a_copy_has_the_same_digests_and_move_statistics(engine):
    source = populated()
    copy = Repository(engine, Sealer(KEY))
    copy.create_schema()
    raw = msgpack.packb(key_copies(source).pack(), use_bin_type=True)
    assert copy.apply_copies(Copies.unpack(msgpack.unpackb(raw, raw=False))) > 0
    for kind, keys in KINDS:
        assert copy.repair_roots(kind, keys) == source.repair_roots(kind, keys)
        assert len(copy.repair_roots(kind, keys)) == len(keys)
        assert copy.key_stats(kind, keys) == source.key_stats(kind, keys)
    assert copy.read_history(CONV, 0, None, 10) == source.read_history(CONV, 0, None, 10)
    assert copy.get_group(GROUP) == source.get_group(GROUP)
    assert copy.unread(A, 10) == source.unread(A, 10)
    assert [copy.get_chunk(FILE, i) for i in range(3)] == [bytes([i]) * 4 for i in range(3)]
    assert copy.get_attachment(FILE) == source.get_attachment(FILE) and copy.get_attachment(GONE) is None
    assert copy.attachment_links(FILE) == source.attachment_links(FILE)
    # Applying the same copies again adds nothing.
    assert copy.apply_copies(key_copies(source)) == 0
    # Forgetting the keys leaves none of their rows.
    assert copy.forget([CONV, GROUP], [A], lambda conv: False, {"att": [FILE, GONE]}) > 0
    for kind, keys in KINDS:
        assert copy.key_stats(kind, keys) == {}
    assert not copy.user_copies(A, 0, 100) and not copy.conversation_copies(CONV, 0, 100)
    copy.close()


_id = st.binary(min_size=16, max_size=16)
_n = st.integers(0, 2**62)
_sealed = st.binary(max_size=64)
#: A row of each declared table, in the shape its ``columns`` say.
ROW = {
    "accounts": st.tuples(_id, _sealed, _sealed, st.booleans(), _n),
    "conversations": st.tuples(_id, st.lists(_id, max_size=4)),
    "messages": st.tuples(_id, _n, _id, _n, _sealed, _n),  # ..., stamp
    "inbox": st.tuples(_id, _n, _id, _n, _n),  # ..., stamp
    "terminals": st.tuples(_id, _id, _n, _n),
    "groups": st.tuples(_id, _sealed, _n, st.lists(_id, max_size=4)),
    "records": st.tuples(_id, st.text(max_size=16), _sealed, _n),
    "reads": st.tuples(_id, _id, _n),
    "search": None,  # derived: copies carry none of its rows
    "attachments": st.tuples(_id, _id, _sealed, _n, _n, st.booleans(), _n, st.booleans()),
    "attachment_chunks": st.tuples(_id, _n, _sealed),
    "attachment_readers": st.tuples(_id, _id),
    "attachment_refs": st.tuples(_id, _id, _n),
    "outbox": st.tuples(st.sampled_from(["conv", "user"]), _id, st.text(max_size=40), st.text(max_size=32),
                        st.sampled_from(["pending", "dead", "done"]), _n, _n, _n, _sealed, st.none() | _sealed, _n),
}


def test_every_declared_table_has_a_row_strategy():
    assert set(ROW) == {t.name for t in TABLES}


@given(st.fixed_dictionaries(
    {name: st.lists(row, max_size=3) if row is not None else st.just([]) for name, row in ROW.items()}
))
def test_copies_round_trip_through_msgpack(rows):
    copies = Copies(**{name: [tuple(r) for r in rs] for name, rs in rows.items()})
    again = Copies.unpack(msgpack.unpackb(msgpack.packb(copies.pack(), use_bin_type=True), raw=False))
    assert again == copies
    merged = Copies()
    merged.merge(copies)
    merged.merge(again)
    assert all(getattr(merged, t.name) == getattr(copies, t.name) * 2 for t in TABLES)


def test_the_search_index_is_forgotten_with_its_conversation_and_never_copied():
    """The index is derived (``derived``): a copy of the conversation carries
    none of it, the copy builds its own, and forgetting the conversation
    deletes it with the conversation's other rows."""
    source = populated()
    assert source.search_index(CONV, lambda content: ("index", 0, [b"tok" + bytes(5)]), 100)[0] == 1
    assert source.search_conversation(CONV, [b"tok" + bytes(5)], 10) != []
    assert source.search_size() == (1, 1)
    copies = key_copies(source)
    assert copies.search == []
    copy = Repository(sqlite_engine(None), Sealer(KEY))
    copy.create_schema()
    copy.apply_copies(copies)
    assert copy.search_size() == (0, 0) and copy.search_behind([CONV]) == [CONV]
    with pytest.raises(ValueError, match="not copied"):
        copy.apply_copies(Copies(search=[(CONV,)]))
    assert source.forget([CONV], [], lambda conv: False) > 0
    assert source.search_size() == (0, 0)
    assert source.search_conversation(CONV, [b"tok" + bytes(5)], 10) == []


def test_a_tombstone_wins_over_a_live_copy_and_chunks_fill_in_any_order():
    """An attachment deleted on one side is not brought back by a copy of it
    from a side that missed the deletion; its copy there loses to the
    tombstone. Chunks missing on one side arrive, whatever their order."""
    source = populated()
    stale = Repository(sqlite_engine(None), Sealer(KEY))
    stale.create_schema()
    stale.put_attachment(AttachmentRow(GONE, B, b"gone", 4, 1, True, 7001))
    stale.put_chunk(GONE, 0, b"gone")
    stale.add_readers(GONE, [B])
    live = stale.attachment_copies(GONE, -1, 100)
    assert source.apply_copies(live) == 0  # the tombstone stays
    assert source.get_attachment(GONE) is None and source.chunk_indexes(GONE) == []
    assert stale.apply_copies(source.attachment_copies(GONE, -1, 100)) == 1
    assert stale.get_attachment(GONE) is None and stale.chunk_indexes(GONE) == []
    assert stale.attachment_links(GONE) == ([], [])
    assert stale.repair_roots("att", [GONE]) == source.repair_roots("att", [GONE])
    # One chunk missing: the roots differ until the copy of that slot lands.
    partial = source.attachment_copies(FILE, -1, 100)
    partial.attachment_chunks = [c for c in partial.attachment_chunks if c[1] != 1]
    stale.apply_copies(partial)
    assert stale.chunk_indexes(FILE) == [0, 2]
    assert stale.repair_roots("att", [FILE]) != source.repair_roots("att", [FILE])
    assert stale.apply_copies(source.repair_rows("att", FILE, [1], False)) == 1
    assert stale.repair_roots("att", [FILE]) == source.repair_roots("att", [FILE])
    assert stale.key_stats("att", [FILE]) == source.key_stats("att", [FILE])
