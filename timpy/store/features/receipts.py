"""Read marks: how far a user has read each conversation (read receipts,
unread counts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, func, select, update

from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, insert_missing
from timpy.store.rows import Row


class ReceiptsProtocol(Protocol):
    def mark_read(self, user_id: bytes, conv_id: bytes, seq: int) -> int: ...

    def unread(self, user_id: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]: ...


class ReceiptsStore(StoreBase):
    def mark_read(self, user_id: bytes, conv_id: bytes, seq: int) -> int:
        """Move the user's read mark of a conversation forward to ``seq``; returns
        the mark before (marks never move back)."""
        rm = s.read_marks
        with self.engine.begin() as conn:
            before = conn.execute(
                select(rm.c.seq).where(and_(rm.c.user_id == user_id, rm.c.conv_id == conv_id))
            ).scalar()
            advance_reads(conn, {(user_id, conv_id): seq})
        return int(before or 0)

    def unread(self, user_id: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
        """The user's inbox messages after each conversation's read mark, as
        (conv id, opened content), at most ``limit`` of the newest, recalled
        and burned ones left out; and the read marks."""
        i, rm, m = s.inbox, s.read_marks, s.messages
        with self.engine.connect() as conn:
            marks = {
                bytes(r.conv_id): int(r.seq)
                for r in conn.execute(select(rm.c.conv_id, rm.c.seq).where(rm.c.user_id == user_id))
            }
            rows = list(conn.execute(
                select(i.c.conv_id, i.c.seq, m.c.content)
                .select_from(
                    i.outerjoin(rm, and_(rm.c.user_id == i.c.user_id, rm.c.conv_id == i.c.conv_id))
                    .join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq))
                )
                .where(and_(i.c.user_id == user_id, i.c.seq > func.coalesce(rm.c.seq, 0)))
                .order_by(i.c.pos.desc())
                .limit(limit)
            ))
        out = [
            (bytes(r.conv_id), self._open_message(bytes(r.conv_id), int(r.seq), bytes(r.content)))
            for r in rows if r.content
        ]
        return out, marks


def advance_reads(conn: Any, marks: dict[tuple[bytes, bytes], int]) -> None:
    """Move read marks, (user id, conv id) -> seq, forward (never back)."""
    rm = s.read_marks
    keys = list(marks)
    have: dict[tuple[bytes, bytes], int] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        users = list({u for u, _ in chunk})
        convs = list({cv for _, cv in chunk})
        for r in conn.execute(select(rm).where(and_(rm.c.user_id.in_(users), rm.c.conv_id.in_(convs)))):
            have[(bytes(r.user_id), bytes(r.conv_id))] = int(r.seq)
    fresh = [dict(user_id=u, conv_id=cv, seq=q) for (u, cv), q in marks.items() if (u, cv) not in have]
    if fresh:
        insert_missing(conn, rm, fresh)
    later = [dict(u=u, c=cv, q=q) for (u, cv), q in marks.items() if (u, cv) in have and have[(u, cv)] < q]
    if later:
        conn.execute(
            update(rm).where(and_(rm.c.user_id == bindparam("u"), rm.c.conv_id == bindparam("c"),
                                  rm.c.seq < bindparam("q"))).values(seq=bindparam("q")),
            later,
        )


class ReadMarksTable(CopiedTable):
    name, wire, table, key_column, kinds = "reads", 7, s.read_marks, "user_id", ("user",)
    columns = "user, conv, seq read"

    def unpack(self, raw: Any) -> Row:
        u, cv, q = raw
        return bytes(u), bytes(cv), int(q)

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        rm = s.read_marks
        return [
            (key, bytes(r.conv_id), int(r.seq))
            for r in conn.execute(select(rm.c.conv_id, rm.c.seq).where(rm.c.user_id == key))
        ]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """Marks move forward only; they are not counted as rows added."""
        advance_reads(conn, {(u, cv): q for u, cv, q in rows})
        return 0

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        rm = s.read_marks
        for row in conn.execute(select(rm.c.user_id, rm.c.conv_id, rm.c.seq).where(rm.c.user_id.in_(keys))):
            yield bytes(row.user_id), ("read", bytes(row.conv_id), int(row.seq))


READ_MARKS = ReadMarksTable()
