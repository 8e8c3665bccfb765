"""The fixed-SQL helpers of the store (``features/base.py``): statements go to
a DB-API cursor of the connection, inside its transaction, on every backend;
driver errors come out as SQLAlchemy's; lookups by pairs find exactly the
rows asked for, whatever the padding."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from timpy.crypto.seal import Sealer
from timpy.store.features.base import (
    driver_first,
    driver_many,
    driver_pairs,
    driver_rows,
    insert_missing,
)
from timpy.store.repository import Repository
from timpy.store.schema import conversations


@pytest.fixture(autouse=True)
def _schema(engine):
    Repository(engine, Sealer(bytes(32))).create_schema()


def _conv(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_statements_run_in_the_connections_transaction(engine):
    with engine.begin() as conn:
        conn.execute(conversations.delete())
        assert driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)",
                           [(_conv(i), i) for i in range(1, 6)]) == 5
    with engine.connect() as conn:  # rolled back: never committed
        driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)", [(_conv(99), 1)])
    with engine.connect() as conn:
        assert driver_first(conn, "SELECT last_seq FROM conversations WHERE conv_id = ?", (_conv(99),)) is None
        assert driver_first(conn, "SELECT last_seq FROM conversations WHERE conv_id = ?", (_conv(3),))[0] == 3
        assert sorted(int(r[0]) for r in driver_rows(conn, "SELECT last_seq FROM conversations")) == [1, 2, 3, 4, 5]


def test_many_counts_every_row_changed(engine):
    """The writer's compare-and-set of the heads relies on the sum."""
    with engine.begin() as conn:
        conn.execute(conversations.delete())
        driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)", [(_conv(i), 0) for i in range(4)])
        moved = driver_many(conn, "UPDATE conversations SET last_seq = ? WHERE conv_id = ? AND last_seq = ?",
                            [(7, _conv(0), 0), (7, _conv(1), 0), (7, _conv(2), 5), (7, _conv(9), 0)])
        assert moved == 2
        assert driver_many(conn, "UPDATE conversations SET last_seq = ? WHERE conv_id = ?", []) == 0


def test_a_driver_error_is_sqlalchemys(engine):
    with engine.begin() as conn:
        conn.execute(conversations.delete())
        driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)", [(_conv(1), 0)])
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
        driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)", [(_conv(2), 0), (_conv(1), 0)])
    assert raised.value.orig is not None
    with engine.connect() as conn:  # the failed transaction stored nothing
        assert driver_first(conn, "SELECT last_seq FROM conversations WHERE conv_id = ?", (_conv(2),)) is None


@pytest.mark.parametrize("asked", [0, 1, 31, 32, 33, 70])
def test_pairs_find_exactly_what_is_asked(engine, asked):
    with engine.begin() as conn:
        conn.execute(conversations.delete())
        driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)",
                    [(_conv(i), i % 5) for i in range(200)])
    wanted = [(_conv(i), i % 5) for i in range(0, 2 * asked, 2)]
    with engine.connect() as conn:
        found = driver_pairs(conn, "SELECT conv_id, last_seq FROM conversations WHERE",
                             "(conv_id = ? AND last_seq = ?)", wanted)
        ranges = driver_pairs(conn, "SELECT conv_id FROM conversations WHERE",
                              "(conv_id >= ? AND conv_id <= ?)", [(_conv(10), _conv(12)), (_conv(50), _conv(50))])
    assert {(bytes(c), int(q)) for c, q in found} == set(wanted)
    assert {bytes(r[0]) for r in ranges} == {_conv(10), _conv(11), _conv(12), _conv(50)}


def test_insert_missing_skips_rows_already_there(engine):
    with engine.begin() as conn:
        conn.execute(conversations.delete())
        insert_missing(conn, conversations, [dict(conv_id=_conv(1), last_seq=4)])
        insert_missing(conn, conversations, [dict(conv_id=_conv(1), last_seq=9), dict(conv_id=_conv(2), last_seq=1)])
        insert_missing(conn, conversations, [dict(conv_id=_conv(3))])  # a column left to its default
    with engine.connect() as conn:
        rows = {bytes(c): int(q) for c, q in driver_rows(conn, "SELECT conv_id, last_seq FROM conversations")}
    assert rows == {_conv(1): 4, _conv(2): 1, _conv(3): 0}
