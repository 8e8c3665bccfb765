"""What every storage mixin shares: the engine and sealer it works with,
the base of a table's declaration in the registry (``CopiedTable``), and
the SQL helpers the features use (the DB-API fast path, insert-if-missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from timpy.crypto.seal import Sealer, message_ad
from timpy.store.rows import EffectOf, Row


class StoreBase:
    """The state every mixin of ``Repository`` reads: one database."""

    def __init__(self, engine: Engine, sealer: Sealer, effect_of: EffectOf | None = None) -> None:
        self.engine = engine
        self._sealer = sealer
        self._effect_of = effect_of
        # Inbox heads as this store's last write batch committed them
        # (``MessagesStore.write_batch``): a hint, checked by that batch's
        # compare-and-set, so a large group's batch need not read them.
        self._inbox_heads: dict[bytes, int] = {}

    def _open_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        if not sealed:
            return b""  # recalled or burned: nothing is left of it
        return self._sealer.open(sealed, message_ad(conv_id, seq))


class CopiedTable:
    """How the rows of one table travel: copied to replicas and to another
    backend (``Copies``), summed up in digests for repair, verified and
    deleted when their key moves. Declared once, beside the feature that owns
    the table, and listed in ``timpy.store.tables``; the code that copies,
    digests and moves keys iterates that list.

    A row belongs to a key: a conversation (``"conv"``) or a user (``"user"``)
    (``kinds``), through ``key_column``. The defaults fit a table of small
    state rows keyed by that column; a table overrides what differs.
    """

    name: str  # its list in ``Copies``
    wire: int  # its list's place in a packed ``Copies``: append-only, never reused
    table: Table
    also: tuple[Table, ...] = ()  # other tables whose rows it copies with its own
    key_column: str
    kinds: tuple[str, ...]  # the kinds of key its rows belong to
    marks_held: bool = False  # digests: a row of it alone makes its key count as held here
    columns: str = ""  # the shape of a row in ``Copies`` (documentation)
    slots_of: str | None = None  # its rows are the numbered slots of this kind of key (messages, inbox)
    # Derived from the key's other rows and rebuilt where the key is held (the
    # search index): copies carry none of its rows, digests and move
    # statistics leave it out; it is forgotten with its key.
    derived: bool = False

    def unpack(self, raw: Any) -> Row:
        """A row as it came over the wire (msgpack), its types restored."""
        raise NotImplementedError

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        """The rows of one key, as copied (the numbered rows of a key, its
        messages or inbox, are paged by the copy code instead)."""
        return []

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """Store copied rows, keeping what is newer here; the rows added or changed."""
        raise NotImplementedError

    def apply_slots(self, repo: StoreBase, conn: Any, rows: list[Row], owner_write: bool) -> int:
        """For a table of slots: ``apply``; ``owner_write``: the rows are an
        owner's new write under its lease, and win a slot held here under an
        equal stamp too (``messages.merge_message_rows``)."""
        raise NotImplementedError

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        """What goes into each key's meta hash (``digest.meta_hash``): (key,
        item), item None for a row that only says the key is held."""
        return ()

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        """One number per key that must agree on both sides of a move
        (``Repository.key_stats``); None: not verified."""
        return None

    def slots(self, conn: Any, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        """For a table of slots: each key's slot hashes (``digest``), by number."""
        raise NotImplementedError

    def forget(self, conn: Any, kind: str, keys: list[bytes]) -> int:
        """Delete the rows of keys that moved away; the rows deleted."""
        column = self.table.c[self.key_column]
        return int(conn.execute(self.table.delete().where(column.in_(keys))).rowcount)


def counts(conn: Any, column: Any, keys: list[bytes]) -> dict[bytes, int]:
    """The rows of each key (keys with none are absent)."""
    rows = conn.execute(select(column, func.count()).where(column.in_(keys)).group_by(column))
    return {bytes(r[0]): int(r[1]) for r in rows}


def driver_sql(conn: Any, sql: str) -> str:
    """Fixed SQL written with ``?`` placeholders, in the driver's own style."""
    return sql if conn.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


# The fixed statements below go to a DB-API cursor of ``conn``'s own
# connection, inside its transaction: ``exec_driver_sql`` builds a result
# object with column metadata for every statement, which cost 55 µs against
# the driver's 16 µs for a one-row SELECT on SQLite, and under a flood of 1:1
# messages (thousands of small statements a second: search indexing, the
# conversation list's notices, the writer) was about 40% of the store
# thread's Python. A driver error is raised as SQLAlchemy's (``IntegrityError``,
# ``OperationalError``, with ``.orig``), as through ``exec_driver_sql``.


def _raised(conn: Any, sql: str, args: Any, exc: Exception) -> Exception:
    return DBAPIError.instance(sql, args, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect)


def driver_rows(conn: Any, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
    """Every row of one fixed statement (``?`` placeholders), through the DB-API."""
    sql = driver_sql(conn, sql)
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, tuple(args))
        return cur.fetchall() if cur.description is not None else []
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _raised(conn, sql, args, exc) from exc
    finally:
        cur.close()


def driver_first(conn: Any, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
    """The first row of one fixed statement, or None."""
    sql = driver_sql(conn, sql)
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, tuple(args))
        return cur.fetchone()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _raised(conn, sql, args, exc) from exc
    finally:
        cur.close()


def driver_many(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """One statement, many rows, straight through the DB-API (``executemany``):
    none of SQLAlchemy's per-row compiling and binding on the hot path.
    Returns the rows it changed."""
    if not rows:
        return 0
    sql = driver_sql(conn, sql)
    cur = conn.connection.cursor()
    try:
        if len(rows) == 1:
            cur.execute(sql, rows[0])
        else:
            cur.executemany(sql, rows)
        return int(cur.rowcount)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _raised(conn, sql, rows, exc) from exc
    finally:
        cur.close()


def driver_in(conn: Any, head: str, keys: list[Any], tail: str = "", lock: bool = False) -> list[tuple[Any, ...]]:
    """``head (?, ?, ...) tail`` for ``keys``, through the DB-API; ``lock``
    takes the rows' write locks (FOR UPDATE) where the backend has them."""
    sql = f"{head} ({', '.join('?' * len(keys))}) {tail}"
    if lock and conn.dialect.name != "sqlite":
        sql += " FOR UPDATE"
    return driver_rows(conn, sql, tuple(keys))


def lost_a_lock_race(exc: OperationalError) -> bool:
    """A deadlock or serialization failure: the database rolled this
    transaction back because another one wanted the same rows."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL (psycopg)
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in (1205, 1213)  # MySQL/MariaDB: lock wait timeout, deadlock


def insert_missing(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert rows, skipping any whose key is there already (copies that race
    with another copy of the same rows). Rows that all name the same columns
    (the replicas' copies, on every write's path) go as fixed SQL through the
    DB-API."""
    if not rows:
        return
    dialect = conn.dialect.name
    columns = list(rows[0])
    # Columns left out take their scalar default, as SQLAlchemy would give it
    # (a callable default, or an unknown column, goes the general way).
    defaults = {c.name: c.default.arg for c in table.columns
                if c.name not in rows[0] and c.default is not None and getattr(c.default, "is_scalar", False)}
    simple = all(c.name in rows[0] or c.name in defaults or c.default is None for c in table.columns)
    if simple and all(len(r) == len(columns) for r in rows) and all(c in rows[-1] for c in columns):
        names = ", ".join([*columns, *defaults])
        marks = ", ".join("?" * (len(columns) + len(defaults)))
        fill = tuple(defaults.values())
        if dialect == "postgresql":
            sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        elif dialect in ("mysql", "mariadb"):
            sql = f"INSERT IGNORE INTO {table.name} ({names}) VALUES ({marks})"
        else:
            sql = f"INSERT OR IGNORE INTO {table.name} ({names}) VALUES ({marks})"
        try:
            driver_many(conn, sql, [(*(r[c] for c in columns), *fill) for r in rows])
            return
        except KeyError:
            pass  # a row without one of the columns: SQLAlchemy fills in defaults below
    if dialect == "postgresql":
        stmt = pg_insert(table).on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        stmt = insert(table).prefix_with("IGNORE")
    elif dialect == "sqlite":
        stmt = insert(table).prefix_with("OR IGNORE")
    else:  # pragma: no cover - the three dialects above are the supported ones
        stmt = insert(table)
    conn.execute(stmt, rows)


def driver_pairs(conn: Any, head: str, term: str, params: list[tuple[Any, ...]], chunk: int = 32) -> list[tuple[Any, ...]]:
    """``head term OR term OR ...`` for ``params`` (one tuple per ``term``),
    ``chunk`` terms per statement: each term an equality or a range on an
    index's columns, which every dialect looks up through that index (an
    ``IN`` over one column, or a range starting at the smallest of all,
    scanned rows of other keys: replicas read a user's whole inbox on every
    copy). A chunk is padded to a power of two by repeating its own terms
    (so each statement's text is one of a few, which the drivers' statement
    caches keep, and no term is looked up more than twice). Rows may come
    twice."""
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(params), chunk):
        part = params[start:start + chunk]
        size = 1
        while size < len(part):
            size *= 2
        part += part[:size - len(part)]  # each term at most twice: a range is never scanned more than twice
        out += driver_rows(conn, f"{head} " + " OR ".join([term] * size), [x for p in part for x in p])
    return out

