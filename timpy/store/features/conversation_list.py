"""Storage of the conversation list: reads over a user's own rows (the inbox
with the message copies beside it, and the read marks), so the list lives,
is copied, repaired and moved with the user: no table of its own (the
``inbox`` index ``ix_inbox_user_conv`` is the inbox's). A mixin of
``Repository``; the sharded one routes each call to the user's backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, select

from timpy.store import schema as s
from timpy.store.features.base import StoreBase
from timpy.store.rows import ConversationRows


class ConversationListProtocol(Protocol):
    def conversation_activity(self, user_id: bytes) -> list[tuple[bytes, int, int, bytes]]: ...

    def conversation_rows(
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int
    ) -> list[ConversationRows]: ...


class ConversationListStore(StoreBase):
    def conversation_activity(self, user_id: bytes) -> list[tuple[bytes, int, int, bytes]]:
        """Every conversation in the user's inbox: (conv id, newest position,
        its time, its content opened: empty when gone)."""
        i, m = s.inbox, s.messages
        newest = select(func.max(i.c.pos)).where(i.c.user_id == user_id).group_by(i.c.conv_id)
        q = (
            select(i.c.conv_id, i.c.pos, m.c.seq, m.c.created_ms, m.c.content)
            .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
            .where(and_(i.c.user_id == user_id, i.c.pos.in_(newest)))
        )
        with self.engine.connect() as conn:
            return [
                (bytes(r.conv_id), int(r.pos), int(r.created_ms),
                 self._open_message(bytes(r.conv_id), int(r.seq), bytes(r.content)))
                for r in conn.execute(q)
            ]

    def conversation_rows(
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int
    ) -> list[ConversationRows]:
        """For each of ``conv_ids`` the user has messages of: its newest
        ``tail`` messages and its messages after the read mark (at most
        ``unread_limit``), opened."""
        i, m, rm = s.inbox, s.messages, s.read_marks
        out: list[ConversationRows] = []
        with self.engine.connect() as conn:
            for conv in conv_ids:
                mark = conn.execute(
                    select(rm.c.seq).where(and_(rm.c.user_id == user_id, rm.c.conv_id == conv))
                ).scalar()
                read_seq = int(mark or 0)
                base = (
                    select(i.c.pos, i.c.seq, m.c.created_ms, m.c.content)
                    .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
                    .where(and_(i.c.user_id == user_id, i.c.conv_id == conv))
                    .order_by(i.c.seq.desc())
                )
                newest = list(conn.execute(base.limit(tail)))
                if not newest:
                    continue
                after = list(conn.execute(base.where(i.c.seq > read_seq).limit(unread_limit)))
                out.append(ConversationRows(
                    conv, int(newest[0].pos), int(newest[0].created_ms), read_seq,
                    [(int(r.seq), int(r.created_ms), self._open_message(conv, int(r.seq), bytes(r.content)))
                     for r in newest],
                    [(int(r.seq), int(r.created_ms), self._open_message(conv, int(r.seq), bytes(r.content)))
                     for r in after],
                ))
        return out


class ShardedConversationListStore:
    """The same calls on ``ShardedRepository``: each to the user's backend."""

    map: Any
    _on: Any

    def conversation_activity(self, user_id: bytes) -> list[tuple[bytes, int, int, bytes]]:
        return self._on(self.map.place(user_id), ConversationListStore.conversation_activity, user_id)

    def conversation_rows(
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int
    ) -> list[ConversationRows]:
        return self._on(self.map.place(user_id), ConversationListStore.conversation_rows, user_id, conv_ids, tail,
                        unread_limit)
