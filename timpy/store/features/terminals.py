"""Terminals: a user's devices, each with its delivery cursor (how far in
the user's inbox it has received) and when it was last seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, counts, driver_in, driver_many
from timpy.store.rows import Row


class TerminalsProtocol(Protocol):
    def open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int: ...

    def open_terminals(self, items: Sequence[tuple[bytes, bytes, int]]) -> list[int]: ...

    def count_terminals(self, user_id: bytes) -> int: ...


class TerminalsStore(StoreBase):
    def open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        """The terminal's delivery cursor, creating the terminal if it is new.

        A new terminal starts at the lowest cursor of the account's other
        terminals, so it receives what some terminal has not yet received.
        """
        try:
            return self._open_terminal(user_id, device_id, now_ms)
        except IntegrityError:  # the same terminal opened at the same moment elsewhere: it exists now
            return self._open_terminal(user_id, device_id, now_ms)

    def open_terminals(self, items: Sequence[tuple[bytes, bytes, int]]) -> list[int]:
        """``open_terminal`` for many (user id, device id, now) at once, in
        one transaction: logins that arrive together share one commit."""
        try:
            return self._open_terminals(items)
        except IntegrityError:  # one of them opened at the same moment elsewhere: one by one
            return [self.open_terminal(*item) for item in items]

    def _open_terminals(self, items: Sequence[tuple[bytes, bytes, int]]) -> list[int]:
        users = list({u for u, _, _ in items})
        cursors: dict[tuple[bytes, bytes], int] = {}
        with self.engine.begin() as conn:
            cursor = conn.dialect.identifier_preparer.quote("cursor")  # a reserved word in MySQL
            for start in range(0, len(users), 500):  # fixed SQL through the DB-API: the login path
                for u, d, c in driver_in(
                    conn, f"SELECT user_id, device_id, {cursor} FROM terminals WHERE user_id IN", users[start : start + 500]
                ):
                    cursors[(bytes(u), bytes(d))] = int(c)
            lowest: dict[bytes, int] = {}
            for (u, _), c in cursors.items():
                lowest[u] = min(c, lowest.get(u, c))
            out: list[int] = []
            new: list[tuple[bytes, bytes, int, int]] = []
            seen: dict[tuple[bytes, bytes], int] = {}
            for u, d, now_ms in items:
                key = (u, d)
                if key in cursors:
                    seen[key] = now_ms
                else:
                    cursors[key] = lowest.get(u, 0)
                    new.append((u, d, cursors[key], now_ms))
                out.append(cursors[key])
            if new:
                driver_many(conn, f"INSERT INTO terminals (user_id, device_id, {cursor}, last_seen_ms) VALUES (?, ?, ?, ?)", new)
            if seen:
                driver_many(conn, "UPDATE terminals SET last_seen_ms = ? WHERE user_id = ? AND device_id = ?",
                            [(now_ms, u, d) for (u, d), now_ms in seen.items()])
        return out

    def _open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        t = s.terminals
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.cursor).where(and_(t.c.user_id == user_id, t.c.device_id == device_id))
            ).first()
            if row is not None:
                conn.execute(
                    update(t)
                    .where(and_(t.c.user_id == user_id, t.c.device_id == device_id))
                    .values(last_seen_ms=now_ms)
                )
                return int(row.cursor)
            start = conn.execute(select(func.min(t.c.cursor)).where(t.c.user_id == user_id)).scalar()
            start = int(start or 0)
            conn.execute(insert(t).values(user_id=user_id, device_id=device_id, cursor=start, last_seen_ms=now_ms))
            return start

    def count_terminals(self, user_id: bytes) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.terminals).where(s.terminals.c.user_id == user_id)).scalar_one())


def advance_cursors(conn: Any, cursors: dict[tuple[bytes, bytes], int]) -> None:
    """Move terminal cursors, (user id, device id) -> position, forward (never back).

    Fixed SQL through the DB-API: every delivery acknowledgement a writer
    batch carries comes here, and SQLAlchemy's compiling and binding of an
    ``update()`` cost more than the statement (docs/performance.md)."""
    cursor = conn.dialect.identifier_preparer.quote("cursor")  # a reserved word in MySQL
    driver_many(
        conn,
        f"UPDATE terminals SET {cursor} = ? WHERE user_id = ? AND device_id = ? AND {cursor} < ?",
        [(p, u, d, p) for (u, d), p in cursors.items()],
    )


class TerminalsTable(CopiedTable):
    name, wire, table, key_column, kinds = "terminals", 4, s.terminals, "user_id", ("user",)
    columns = "user, device, cursor, last seen (ms)"

    def unpack(self, raw: Any) -> Row:
        u, d, cu, t = raw
        return bytes(u), bytes(d), int(cu), int(t)

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        t = s.terminals
        return [
            (key, bytes(r.device_id), int(r.cursor), int(r.last_seen_ms))
            for r in conn.execute(select(t).where(t.c.user_id == key))
        ]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A terminal missing here, or its cursor further on (cursors move forward only)."""
        t = s.terminals
        added = 0
        for user, device, cursor, seen in rows:
            row = conn.execute(
                select(t.c.cursor).where(and_(t.c.user_id == user, t.c.device_id == device))
            ).first()
            if row is None:
                conn.execute(insert(t).values(user_id=user, device_id=device, cursor=cursor, last_seen_ms=seen))
                added += 1
            elif int(row.cursor) < cursor:
                conn.execute(
                    update(t).where(and_(t.c.user_id == user, t.c.device_id == device)).values(cursor=cursor)
                )
        return added

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.terminals.c.user_id, keys)


TERMINALS = TerminalsTable()
