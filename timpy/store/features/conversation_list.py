"""Storage of the conversation list: reads over a user's own rows (the inbox
with the message copies beside it, and the read marks), so the list lives,
is copied, repaired and moved with the user: no table of its own (the
``inbox`` index ``ix_inbox_user_conv`` is the inbox's). A mixin of
``Repository``; the sharded one routes each call to the user's backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, select

from timpy.store import schema as s
from timpy.store.features.base import StoreBase, driver_rows
from timpy.store.rows import ConversationRows


class ConversationListProtocol(Protocol):
    def conversation_activity(self, user_id: bytes) -> list[tuple[bytes, int, int, bytes]]: ...

    def conversation_rows(
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int,
        known: Mapping[bytes, Known] | None = None, enough: Callable[[bytes], bool] | None = None,
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
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int,
        known: Mapping[bytes, Known] | None = None, enough: Callable[[bytes], bool] | None = None,
    ) -> list[ConversationRows]:
        """For each of ``conv_ids`` the user has messages of: its newest
        ``tail`` messages and its messages after the read mark (at most
        ``unread_limit``), opened.

        ``known``: for some conversations, what the caller counted before
        (the read mark then, the newest seq counted, and the fingerprint of
        the messages after the mark up to it: ``ConversationRows.counted``).
        Where the mark and the fingerprint are unchanged, only the messages
        after that seq are read and opened (``unread_after``): the
        conversation list's notices then open each message once, not every
        unread one again on every notice.

        ``enough``: the newest rows are opened in turn until one's content
        makes it true (the entry has what it shows); the older ones come with
        empty content, unopened, unless they are among the unread.

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
                since, before = read_seq, (0, 0, 0, 0)
                was = known.get(conv) if known else None
                if was is not None and was[0] == read_seq and unread_limit > 0:
                    sums = driver_rows(conn, _SUMS, (user_id, conv, read_seq, was[1]))[0]
                    if fingerprint_of_sums(sums) == was[2]:
                        since, before = was[1], was[2]
                after = driver_rows(conn, _AFTER, (user_id, conv, since, unread_limit)) if unread_limit > 0 else []
                if since != read_seq and before[0] + len(after) > unread_limit:  # past the bound: read as a whole
                    since, before = read_seq, (0, 0, 0, 0)
                    after = driver_rows(conn, _AFTER, (user_id, conv, since, unread_limit))
                counted = None
                if len(after) < unread_limit:  # every message after ``since`` was read
                    new = fingerprint(after)
                    total = tuple(a + b for a, b in zip(before, new, strict=True))
                    counted = (int(after[0][1]) if after else since, total)
                opened: dict[int, bytes] = {}  # the newest and the unread are mostly the same messages: open each once

                def open_(seq: int, content: bytes, conv: bytes = conv, opened: dict[int, bytes] = opened) -> bytes:
                    got = opened.get(seq)
                    if got is None:
                        got = opened[seq] = self._open_message(conv, seq, bytes(content))
                    return got

                newest_rows: list[tuple[int, int, bytes]] = []
                done = False
                for _, seq, ms, content, _e in newest:
                    got = opened.get(int(seq), b"") if done else open_(int(seq), content)
                    newest_rows.append((int(seq), int(ms), got))
                    done = done or (enough is not None and bool(got) and enough(got))
                out.append(ConversationRows(
                    conv, int(newest[0][0]), int(newest[0][2]), read_seq,
                    newest_rows,
                    [(int(seq), int(ms), open_(int(seq), content)) for _, seq, ms, content, _e in after],
                    since, counted,
                ))
        return out


# What the caller knew of a conversation: (read mark, newest seq counted, fingerprint).
Known = tuple[int, int, tuple[int, int, int, int]]
_STAMP_LOW = (1 << 24) - 1  # the low bits of a row's stamp that go in a fingerprint (sums stay in 64 bits)


def fingerprint(rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int, int]:
    """Of rows (pos, seq, ms, sealed content, stamp): how many, and the sums
    of their inbox positions, of their stamps' low bits and of their sealed
    lengths. A message added, taken back (its content emptied), replaced by
    a copy or repair (another stamp or length) or moved changes it."""
    return (
        len(rows), sum(int(r[0]) for r in rows), sum(int(r[4]) & _STAMP_LOW for r in rows),
        sum(len(r[3] or b"") for r in rows),
    )


def fingerprint_of_sums(row: tuple[Any, ...]) -> tuple[int, int, int, int]:
    return (int(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))


_MARKS = "SELECT conv_id, seq FROM read_marks WHERE user_id = ? AND conv_id IN"
_JOIN = (
    " FROM inbox i JOIN messages m ON m.conv_id = i.conv_id AND m.seq = i.seq WHERE i.user_id = ? AND i.conv_id = ?"
)
_ROWS = "SELECT i.pos, i.seq, m.created_ms, m.content, m.epoch" + _JOIN
_NEWEST = _ROWS + " ORDER BY i.seq DESC LIMIT ?"
_AFTER = _ROWS + " AND i.seq > ? ORDER BY i.seq DESC LIMIT ?"
_SUMS = (
    f"SELECT count(*), sum(i.pos), sum(m.epoch & {_STAMP_LOW}), sum(coalesce(length(m.content), 0))"
    + _JOIN + " AND i.seq > ? AND i.seq <= ?"
)


class ShardedConversationListStore:
    """The same calls on ``ShardedRepository``: each to the user's backend."""

    map: Any
    _on: Any

    def conversation_activity(self, user_id: bytes) -> list[tuple[bytes, int, int, bytes]]:
        return self._on(self.map.place(user_id), ConversationListStore.conversation_activity, user_id)

    def conversation_rows(
        self, user_id: bytes, conv_ids: Sequence[bytes], tail: int, unread_limit: int,
        known: Mapping[bytes, Known] | None = None, enough: Callable[[bytes], bool] | None = None,
    ) -> list[ConversationRows]:
        return self._on(self.map.place(user_id), ConversationListStore.conversation_rows, user_id, conv_ids, tail,
                        unread_limit, known, enough)
