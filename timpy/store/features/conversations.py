"""Conversations: a conversation's row (where its numbering stands,
``last_seq``) and its members."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, insert, select, update

from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, counts, insert_missing
from timpy.store.rows import Row


class ConversationsProtocol(Protocol):
    def conversation_members(self, conv_id: bytes) -> list[bytes]: ...

    def is_member(self, conv_id: bytes, user_id: bytes) -> bool: ...


class ConversationsStore(StoreBase):
    def conversation_members(self, conv_id: bytes) -> list[bytes]:
        cm = s.conv_members
        with self.engine.connect() as conn:
            return [bytes(r.user_id) for r in conn.execute(select(cm.c.user_id).where(cm.c.conv_id == conv_id))]

    def is_member(self, conv_id: bytes, user_id: bytes) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(s.conv_members.c.user_id).where(
                        and_(s.conv_members.c.conv_id == conv_id, s.conv_members.c.user_id == user_id)
                    )
                ).first()
                is not None
            )



def set_members(conn: Any, conv_id: bytes, members: Sequence[bytes]) -> None:
    """Make ``members`` the conversation's members."""
    cm = s.conv_members
    have = {bytes(r.user_id) for r in conn.execute(select(cm.c.user_id).where(cm.c.conv_id == conv_id))}
    want = set(members)
    if have - want:
        conn.execute(cm.delete().where(and_(cm.c.conv_id == conv_id, cm.c.user_id.in_(list(have - want)))))
    if want - have:
        conn.execute(insert(cm), [dict(conv_id=conv_id, user_id=u) for u in sorted(want - have)])


class ConversationsTable(CopiedTable):
    """The conversation's row and its members (``conv_members``), as one."""

    name, wire, table, key_column, kinds = "conversations", 1, s.conversations, "conv_id", ("conv",)
    also = (s.conv_members,)
    marks_held = True
    columns = "conv, [member user ids] (empty for a group: its members travel with its state)"

    def unpack(self, raw: Any) -> Row:
        cv, ms = raw
        return bytes(cv), [bytes(u) for u in ms]

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        cm, g = s.conv_members, s.groups
        if conn.execute(select(g.c.group_id).where(g.c.group_id == key)).first() is not None:
            return [(key, [])]  # a group's members travel with its state (a copy may be older: no re-adding)
        members = [bytes(r.user_id) for r in conn.execute(select(cm.c.user_id).where(cm.c.conv_id == key))]
        return [(key, members)] if members else []

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """The conversation (numbered up to its highest message here) and any
        member missing here; members are never removed by a copy."""
        m, c = s.messages, s.conversations
        added = 0
        for conv, members in rows:
            top = conn.execute(select(func.max(m.c.seq)).where(m.c.conv_id == conv)).scalar() or 0
            row = conn.execute(select(c.c.last_seq).where(c.c.conv_id == conv).with_for_update()).first()
            if row is None:
                conn.execute(insert(c).values(conv_id=conv, last_seq=int(top)))
                added += 1
            elif int(top) > int(row.last_seq):
                conn.execute(update(c).where(c.c.conv_id == conv).values(last_seq=int(top)))
            have = {
                bytes(r.user_id)
                for r in conn.execute(select(s.conv_members.c.user_id).where(s.conv_members.c.conv_id == conv))
            }
            missing = [dict(conv_id=conv, user_id=u) for u in sorted(set(members)) if u not in have]
            if missing:
                insert_missing(conn, s.conv_members, missing)
        return added

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        c, cm = s.conversations, s.conv_members
        for row in conn.execute(select(c.c.conv_id).where(c.c.conv_id.in_(keys))):
            yield bytes(row.conv_id), None
        for row in conn.execute(select(cm.c.conv_id, cm.c.user_id).where(cm.c.conv_id.in_(keys))):
            yield bytes(row.conv_id), ("member", bytes(row.user_id))

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.conv_members.c.conv_id, keys)

    def forget(self, conn: Any, kind: str, keys: list[bytes]) -> int:
        deleted = 0
        for table in (s.conv_members, s.conversations):
            deleted += conn.execute(table.delete().where(table.c.conv_id.in_(keys))).rowcount
        return deleted


CONVERSATIONS = ConversationsTable()
