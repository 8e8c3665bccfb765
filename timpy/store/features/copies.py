"""Copies of keys between nodes (replication, catch-up, anti-entropy) and
between backends (moves): reading a key's rows as ``Copies``, applying
them, and the digests (key, head) that say which keys a side lacks.

Rows travel sealed, exactly as stored: every node holds the same key and
the associated data names the row, so a copy opens wherever it lands. Each
table says how (``timpy.store.tables``); this code only walks the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import and_, select

from timpy.store import schema as s
from timpy.store.features.base import StoreBase
from timpy.store.rows import Copies
from timpy.store.tables import KEYS, TABLES


class DigestProtocol(Protocol):
    def user_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]: ...


class CopiesProtocol(Protocol):
    """Copies of one database's keys (embedded replicas; one backend of a move)."""

    def apply_copies(self, bundle: Copies, owner_write: bool = False) -> int: ...

    def conversation_copies(self, conv_id: bytes, after_seq: int, limit: int) -> Copies: ...

    def user_copies(self, user_id: bytes, after_pos: int, limit: int) -> Copies: ...

    def attachment_copies(self, att_id: bytes, after_idx: int, limit: int) -> Copies: ...

    def key_copies(self, kind: str, key: bytes, after: int, limit: int) -> Copies: ...

    def conversation_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]: ...

    def key_digest(self, kind: str, after: bytes, limit: int) -> list[tuple[bytes, int]]: ...

    def behind(self, kind: str, digest: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, int]]: ...


class CopiesStore(StoreBase):
    def apply_copies(self, bundle: Copies, owner_write: bool = False) -> int:
        """Store rows copied from another node, keeping what is here already
        unless a copy's row wins its slot (a higher stamp, or ``owner_write``,
        an owner's new write, at an equal one: ``messages.merge_message_rows``);
        counters only move forward. Returns the number of rows added."""
        added = 0
        with self.engine.begin() as conn:
            for table in TABLES:
                rows = getattr(bundle, table.name)
                if rows:
                    if table.slots_of is not None:
                        added += table.apply_slots(self, conn, rows, owner_write)
                    else:
                        added += table.apply(self, conn, rows)
        return added

    def conversation_copies(self, conv_id: bytes, after_seq: int, limit: int) -> Copies:
        """A conversation's state (members or group, records) and its messages
        after ``after_seq`` (``limit`` at most)."""
        m = s.messages
        copies = Copies()
        with self.engine.connect() as conn:
            for table in KEYS["conv"].state_tables():
                setattr(copies, table.name, table.rows_of(conn, "conv", conv_id))
            rows = conn.execute(
                select(m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                .where(and_(m.c.conv_id == conv_id, m.c.seq > after_seq))
                .order_by(m.c.seq.asc())
                .limit(limit)
            )
            copies.messages = [
                (conv_id, int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content), int(r.epoch)) for r in rows
            ]
        return copies

    def user_copies(self, user_id: bytes, after_pos: int, limit: int) -> Copies:
        """A user's account and state (terminals, records, read marks), and
        inbox after ``after_pos`` with its messages; nothing without the account."""
        kind = KEYS["user"]
        i, m = s.inbox, s.messages
        copies = Copies()
        with self.engine.connect() as conn:
            for table in kind.state_tables():
                setattr(copies, table.name, table.rows_of(conn, "user", user_id))
                if table.name == kind.anchor and not getattr(copies, table.name):
                    return Copies()
            inbox = list(
                conn.execute(
                    select(i.c.pos, i.c.conv_id, i.c.seq, i.c.epoch)
                    .where(and_(i.c.user_id == user_id, i.c.pos > after_pos))
                    .order_by(i.c.pos.asc())
                    .limit(limit)
                )
            )
            if inbox:
                rows = conn.execute(
                    select(m.c.conv_id, m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                    .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
                    .where(and_(i.c.user_id == user_id, i.c.pos > after_pos, i.c.pos <= inbox[-1].pos))
                )
                copies.messages = [
                    (bytes(r.conv_id), int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content), int(r.epoch))
                    for r in rows
                ]
            copies.inbox = [(user_id, int(r.pos), bytes(r.conv_id), int(r.seq), int(r.epoch)) for r in inbox]
        return copies

    def attachment_copies(self, att_id: bytes, after_idx: int, limit: int) -> Copies:
        """An attachment's row (or tombstone), readers and references, and
        its chunks after index ``after_idx`` (``limit`` at most)."""
        c = s.attachment_chunks
        copies = Copies()
        with self.engine.connect() as conn:
            for table in KEYS["att"].state_tables():
                setattr(copies, table.name, table.rows_of(conn, "att", att_id))
            rows = conn.execute(
                select(c.c.idx, c.c.content).where(and_(c.c.att_id == att_id, c.c.idx > after_idx))
                .order_by(c.c.idx.asc()).limit(limit)
            )
            copies.attachment_chunks = [(att_id, int(r.idx), bytes(r.content)) for r in rows]
        return copies

    def key_copies(self, kind: str, key: bytes, after: int, limit: int) -> Copies:
        """``conversation_copies``, ``user_copies`` or ``attachment_copies``; the slots after ``after``."""
        if kind == "conv":
            return self.conversation_copies(key, after, limit)
        if kind == "att":
            return self.attachment_copies(key, after, limit)
        return self.user_copies(key, after, limit)

    def key_digest(self, kind: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(key, head) of the keys of a kind held here, in key order, after ``after``."""
        k = KEYS[kind]
        key, head = k.table.c[k.key], k.table.c[k.head]
        with self.engine.connect() as conn:
            rows = conn.execute(select(key, head).where(key > after).order_by(key.asc()).limit(limit))
            return [(bytes(r[0]), int(r[1])) for r in rows]

    def conversation_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(conv id, last seq) of the conversations here, in id order, after ``after``."""
        return self.key_digest("conv", after, limit)

    def user_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(user id, inbox head) of the accounts here, in id order, after ``after``."""
        return self.key_digest("user", after, limit)

    def behind(self, kind: str, digest: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """Of a peer's digest, the keys where this node has less: (key, what it has; -1 = nothing)."""
        if not digest:
            return []
        k = KEYS[kind]
        key, head = k.table.c[k.key], k.table.c[k.head]
        with self.engine.connect() as conn:
            keys = [kk for kk, _ in digest]
            mine = {bytes(r[0]): int(r[1]) for r in conn.execute(select(key, head).where(key.in_(keys)))}
        return [(kk, mine.get(kk, -1)) for kk, v in digest if mine.get(kk, -1) < v]
