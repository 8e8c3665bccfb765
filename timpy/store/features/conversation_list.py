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
from timpy.store.features.base import StoreBase, driver_rows
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
        ``unread_limit``), opened.

        Read on every change of a live user's entry (the conversation list's
        notices), so through fixed SQL and the DB-API: building the
        statements through SQLAlchemy per conversation was a quarter of the
        store thread's time under a flood of 1:1 messages."""
        out: list[ConversationRows] = []
        if not conv_ids:
            return out
        with self.engine.connect() as conn:
            marks: dict[bytes, int] = {}
            for k in range(0, len(conv_ids), 500):
                chunk = list(conv_ids[k:k + 500])
                for conv, seq in driver_rows(conn, f"{_MARKS} ({', '.join('?' * len(chunk))})", (user_id, *chunk)):
                    marks[bytes(conv)] = int(seq or 0)
            for conv in conv_ids:
                newest = driver_rows(conn, _NEWEST, (user_id, conv, tail))
                if not newest:
                    continue
                read_seq = marks.get(conv, 0)
                after = driver_rows(conn, _AFTER, (user_id, conv, read_seq, unread_limit)) if unread_limit > 0 else []
                opened: dict[int, bytes] = {}  # the newest and the unread are mostly the same messages: open each once

                def open_(seq: int, content: bytes, conv: bytes = conv, opened: dict[int, bytes] = opened) -> bytes:
                    got = opened.get(seq)
                    if got is None:
                        got = opened[seq] = self._open_message(conv, seq, bytes(content))
                    return got

                out.append(ConversationRows(
                    conv, int(newest[0][0]), int(newest[0][2]), read_seq,
                    [(int(seq), int(ms), open_(int(seq), content)) for _, seq, ms, content in newest],
                    [(int(seq), int(ms), open_(int(seq), content)) for _, seq, ms, content in after],
                ))
        return out


_MARKS = "SELECT conv_id, seq FROM read_marks WHERE user_id = ? AND conv_id IN"
_ROWS = (
    "SELECT i.pos, i.seq, m.created_ms, m.content FROM inbox i"
    " JOIN messages m ON m.conv_id = i.conv_id AND m.seq = i.seq WHERE i.user_id = ? AND i.conv_id = ?"
)
_NEWEST = _ROWS + " ORDER BY i.seq DESC LIMIT ?"
_AFTER = _ROWS + " AND i.seq > ? ORDER BY i.seq DESC LIMIT ?"


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
