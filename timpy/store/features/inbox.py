"""Inboxes: every message for a user, numbered per user (``pos``), so each
terminal needs one cursor to know what it has not yet received. The
entries are written with their messages (``messages.write_batch``); a
message row is kept beside an entry whose conversation lives elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import and_, select

from timpy.store import digest as d
from timpy.store import schema as s
from timpy.store.features.base import (
    CopiedTable,
    StoreBase,
    counts,
    driver_many,
    driver_pairs,
    driver_rows,
    insert_missing,
)
from timpy.store.rows import InboxEntry, Row, StoredMessage


class InboxProtocol(Protocol):
    def read_inbox(self, user_id: bytes, after_pos: int, limit: int) -> list[InboxEntry]: ...

    def read_inboxes(self, reads: Sequence[tuple[bytes, int, int]]) -> list[list[InboxEntry]]: ...

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

    def read_inboxes(self, reads: Sequence[tuple[bytes, int, int]]) -> list[list[InboxEntry]]:
        """``read_inbox`` for many (user id, after position, limit) at once
        (terminals that sync together, as after logins): one connection,
        fixed SQL through the DB-API."""
        out: list[list[InboxEntry]] = []
        with self.engine.connect() as conn:
            for user_id, after_pos, limit in reads:
                out.append([
                    InboxEntry(pos, StoredMessage(
                        conv_id := bytes(conv), seq, created_ms, self._open_message(conv_id, seq, bytes(content))))
                    for pos, conv, seq, created_ms, content in driver_rows(conn, _READ_INBOX, (user_id, after_pos, limit))
                ])
        return out

    def inbox_head(self, user_id: bytes) -> int:
        """Where this node's copy of the user's inbox ends; -1 without the account."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.accounts.c.inbox_head).where(s.accounts.c.user_id == user_id)).first()
            return -1 if row is None else int(row.inbox_head)


_IN_CHUNK = 500

# ``read_inbox`` in fixed SQL (``read_inboxes``, the path of logins' syncs).
_READ_INBOX = (
    "SELECT i.pos, i.conv_id, i.seq, m.created_ms, m.content FROM inbox i"
    " JOIN messages m ON m.conv_id = i.conv_id AND m.seq = i.seq"
    " WHERE i.user_id = ? AND i.pos > ? ORDER BY i.pos ASC LIMIT ?"
)


_HELD_INBOX = "SELECT user_id, pos, conv_id, seq, epoch FROM inbox WHERE"


def merge_inbox_rows(
    conn: Any, incoming: Sequence[tuple[bytes, int, bytes, int, int]], owner_write: bool = False
) -> list[dict[str, Any]]:
    """The inbox rows of ``incoming`` to insert, once every entry here they
    beat is removed: another entry at the same (user, position) under a lower
    epoch, or the same message at another position under a lower epoch (a
    message sits once in an inbox; at an equal epoch both stay, as repair
    merges each slot on its own). ``owner_write``: as for messages, the
    owner's new entries win an equal epoch at their position."""
    i = s.inbox
    held: dict[tuple[bytes, int], tuple[bytes, int, int]] = {}  # (user, pos) -> (conv, seq, epoch)
    wanted = {(bytes(r[0]), bytes(r[2]), int(r[3])) for r in incoming}
    spans: dict[bytes, tuple[int, int]] = {}  # user -> the lowest and highest position coming
    for r in incoming:
        user, pos = bytes(r[0]), int(r[1])
        lo, hi = spans.get(user, (pos, pos))
        spans[user] = (min(lo, pos), max(hi, pos))
    # Only the entries a copy can meet: at its own positions, and its
    # messages wherever they sit in these inboxes (ix_inbox_message). Reading
    # from the lowest position coming for every user read whole inboxes.
    found = driver_pairs(conn, _HELD_INBOX, "(user_id = ? AND pos >= ? AND pos <= ?)",
                         [(u, lo, hi) for u, (lo, hi) in spans.items()])
    found += [
        r for r in driver_pairs(conn, _HELD_INBOX, "(conv_id = ? AND seq = ?)", list({(c, q) for _, c, q in wanted}))
        if (bytes(r[0]), bytes(r[2]), int(r[3])) in wanted
    ]
    for user, pos, conv, seq, epoch in found:
        held[(bytes(user), int(pos))] = (bytes(conv), int(seq), int(epoch))
    where = {(u, c, q): p for (u, p), (c, q, _e) in held.items()}
    rows: list[dict[str, Any]] = []
    for user, pos, conv, seq, epoch in incoming:
        here = held.get((user, pos))
        if here is not None:
            if here[:2] == (conv, seq) or here[2] > epoch or (here[2] == epoch and not owner_write):
                continue
        other = where.get((user, conv, seq))
        if other is not None and (other == pos or held[(user, other)][2] == epoch):
            other = None
        if other is not None and held[(user, other)][2] > epoch:
            continue
        if here is not None:
            conn.execute(i.delete().where(and_(i.c.user_id == user, i.c.pos == pos)))
            where.pop((user, here[0], here[1]), None)
        if other is not None:
            conn.execute(i.delete().where(and_(i.c.user_id == user, i.c.pos == other)))
            held.pop((user, other), None)
        held[(user, pos)] = (conv, seq, epoch)
        where[(user, conv, seq)] = pos
        rows.append(dict(user_id=user, pos=pos, conv_id=conv, seq=seq, epoch=epoch))
    return rows


class InboxTable(CopiedTable):
    """The slots of a user. Its rows travel paged (``user_copies``), with the
    message rows they point to."""

    name, wire, table, key_column, kinds = "inbox", 3, s.inbox, "user_id", ("user",)
    slots_of = "user"
    columns = "user, pos, conv, seq, stamp (digest.row_stamp)"

    def unpack(self, raw: Any) -> Row:
        # A row from a node before schema 6 has no stamp: 0.
        u, p, cv, q = raw[:4]
        return bytes(u), int(p), bytes(cv), int(q), int(raw[4]) if len(raw) > 4 else 0

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        return self.apply_slots(repo, conn, rows, False)

    def apply_slots(self, repo: StoreBase, conn: Any, rows: list[Row], owner_write: bool) -> int:
        """Entries missing here, or winning their position over the entry
        here (``merge_inbox_rows``: the higher stamp); the users' inbox heads
        move up to them."""
        i = s.inbox
        added = 0
        fresh = merge_inbox_rows(conn, rows, owner_write)
        tops: dict[bytes, int] = {}
        for user, pos, *_ in rows:
            tops[user] = max(tops.get(user, 0), pos)
        if fresh:
            insert_missing(conn, i, fresh)
            added += len(fresh)
        driver_many(conn, "UPDATE accounts SET inbox_head = ? WHERE user_id = ? AND inbox_head < ?",
                    [(v, u, v) for u, v in tops.items()])
        return added

    def slots(self, conn: Any, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        # An inbox slot names its message by the row held beside it too:
        # replicas whose entries agree but whose rows differ are repaired.
        i, m = s.inbox, s.messages
        out: dict[bytes, dict[int, bytes]] = {k: {} for k in keys}
        q = (
            select(i.c.user_id, i.c.pos, i.c.conv_id, i.c.seq, i.c.epoch, m.c.dedup, m.c.epoch.label("row_epoch"))
            .select_from(i.outerjoin(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
            .where(i.c.user_id.in_(keys))
        )
        for r in conn.execute(q):
            out[bytes(r.user_id)][int(r.pos)] = d.inbox_hash(
                bytes(r.conv_id), int(r.seq), bytes(r.dedup or b""), max(int(r.epoch), int(r.row_epoch or 0))
            )
        return out

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.inbox.c.user_id, keys)


INBOX = InboxTable()
