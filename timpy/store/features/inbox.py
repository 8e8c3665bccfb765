"""Inboxes: every message for a user, numbered per user (``pos``), so each
terminal needs one cursor to know what it has not yet received. The
entries are written with their messages (``messages.write_batch``); a
message row is kept beside an entry whose conversation lives elsewhere."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import and_, bindparam, select, update

from timpy.store import digest as d
from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, counts, insert_missing
from timpy.store.rows import InboxEntry, Row, StoredMessage


class InboxProtocol(Protocol):
    def read_inbox(self, user_id: bytes, after_pos: int, limit: int) -> list[InboxEntry]: ...

    def inbox_head(self, user_id: bytes) -> int: ...


class InboxStore(StoreBase):
    def read_inbox(self, user_id: bytes, after_pos: int, limit: int) -> list[InboxEntry]:
        i, m = s.inbox, s.messages
        q = (
            select(i.c.pos, i.c.conv_id, i.c.seq, m.c.created_ms, m.c.content)
            .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
            .where(and_(i.c.user_id == user_id, i.c.pos > after_pos))
            .order_by(i.c.pos.asc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [
            InboxEntry(
                r.pos,
                StoredMessage(bytes(r.conv_id), r.seq, r.created_ms, self._open_message(bytes(r.conv_id), r.seq, r.content)),
            )
            for r in rows
        ]

    def inbox_head(self, user_id: bytes) -> int:
        """Where this node's copy of the user's inbox ends; -1 without the account."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.accounts.c.inbox_head).where(s.accounts.c.user_id == user_id)).first()
            return -1 if row is None else int(row.inbox_head)


class InboxTable(CopiedTable):
    """The slots of a user. Its rows travel paged (``user_copies``), with the
    message rows they point to."""

    name, wire, table, key_column, kinds = "inbox", 3, s.inbox, "user_id", ("user",)
    slots_of = "user"
    columns = "user, pos, conv, seq"

    def unpack(self, raw: Any) -> Row:
        u, p, cv, q = raw
        return bytes(u), int(p), bytes(cv), int(q)

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """Entries missing here (by position and by message); the users'
        inbox heads move up to them."""
        i, a = s.inbox, s.accounts
        added = 0
        users = list({r[0] for r in rows})
        have_rows = list(conn.execute(select(i.c.user_id, i.c.pos, i.c.conv_id, i.c.seq).where(i.c.user_id.in_(users))
            .where(i.c.pos >= min(r[1] for r in rows))))
        have_pos = {(bytes(r.user_id), int(r.pos)) for r in have_rows}
        have_msg = {(bytes(r.user_id), bytes(r.conv_id), int(r.seq)) for r in have_rows}
        fresh = []
        tops: dict[bytes, int] = {}
        for user, pos, conv, seq in rows:
            tops[user] = max(tops.get(user, 0), pos)
            if (user, pos) in have_pos or (user, conv, seq) in have_msg:
                continue
            have_pos.add((user, pos))
            have_msg.add((user, conv, seq))
            fresh.append(dict(user_id=user, pos=pos, conv_id=conv, seq=seq))
        if fresh:
            insert_missing(conn, i, fresh)
            added += len(fresh)
        conn.execute(
            update(a)
            .where(and_(a.c.user_id == bindparam("k"), a.c.inbox_head < bindparam("v")))
            .values(inbox_head=bindparam("v")),
            [dict(k=u, v=v) for u, v in tops.items()],
        )
        return added

    def slots(self, conn: Any, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        i = s.inbox
        out: dict[bytes, dict[int, bytes]] = {k: {} for k in keys}
        for r in conn.execute(select(i.c.user_id, i.c.pos, i.c.conv_id, i.c.seq).where(i.c.user_id.in_(keys))):
            out[bytes(r.user_id)][int(r.pos)] = d.inbox_hash(bytes(r.conv_id), int(r.seq))
        return out

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.inbox.c.user_id, keys)


INBOX = InboxTable()
