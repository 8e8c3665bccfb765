"""Messages: each conversation's numbered messages, sealed, and the writer's
batch that stores them with their members' inbox entries in one
transaction (the hot path: fixed SQL through the DB-API, many rows per
statement); what a message does to an earlier one (recall, burn, edit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from timpy.crypto.seal import message_ad, row_ad
from timpy.errors import Code, RequestError, StorageError
from timpy.store import digest as d
from timpy.store import schema as s
from timpy.store.features.base import (
    CopiedTable,
    StoreBase,
    counts,
    driver_in,
    driver_many,
    driver_pairs,
    insert_missing,
    lost_a_lock_race,
)
from timpy.store.features.terminals import advance_cursors
from timpy.store.rows import (
    Appended,
    InboxItem,
    InboxPlaced,
    NewMessage,
    Row,
    StoredMessage,
    Written,
)


class ConcurrentWriteError(StorageError):
    """Another writer took a conversation or inbox position first (two nodes
    that each believe they own a key, on one shared database). The batch was
    rolled back whole; sending again is safe."""


class MessagesProtocol(Protocol):
    def append_messages(
        self, batch: Sequence[NewMessage], cursors: dict[tuple[bytes, bytes], int] | None = None
    ) -> list[Appended]: ...

    def write_batch(
        self,
        batch: Sequence[NewMessage],
        inbox_items: Sequence[InboxItem] = (),
        cursors: dict[tuple[bytes, bytes], int] | None = None,
        local_users: frozenset[bytes] | None = None,
        epoch: int = 0,
    ) -> Written: ...

    def get_message(self, conv_id: bytes, seq: int) -> StoredMessage | None: ...

    def read_history(
        self, conv_id: bytes, before_seq: int, after_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]: ...

    def conversation_head(self, conv_id: bytes) -> int: ...

    def open_sealed_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes: ...


class UndoProtocol(Protocol):
    """Replicas only: taking back a write that never reached its quorum."""

    def undo_writes(
        self, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]], stamp: int = 0
    ) -> int: ...


class MessagesStore(StoreBase):
    def append_messages(
        self, batch: Sequence[NewMessage], cursors: dict[tuple[bytes, bytes], int] | None = None
    ) -> list[Appended]:
        """``write_batch`` with sends only, every member's inbox kept here."""
        return self.write_batch(batch, (), cursors).appended

    def write_batch(
        self,
        batch: Sequence[NewMessage],
        inbox_items: Sequence[InboxItem] = (),
        cursors: dict[tuple[bytes, bytes], int] | None = None,
        local_users: frozenset[bytes] | None = None,
        epoch: int = 0,
    ) -> Written:
        """``_write_batch``, fenced: on a database two nodes share, the one
        that commits a conversation's or an inbox's position second finds it
        taken (unique keys, compare-and-set of the heads) and stores nothing."""
        try:
            hinted: list[bytes] = []
            try:
                return self._write_batch(batch, inbox_items, cursors, local_users, epoch, hinted)
            except (IntegrityError, OperationalError) as first:
                if not hinted or (isinstance(first, OperationalError) and not lost_a_lock_race(first)):
                    raise
                # A kept head may have been out of date (moved by a copy, an
                # undo, a repair, or another writer): nothing was stored; do
                # it again from the heads as stored.
                self._inbox_heads.clear()
            return self._write_batch(batch, inbox_items, cursors, local_users, epoch)
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not lost_a_lock_race(exc):
                raise
            raise ConcurrentWriteError(
                "another node stored messages in the same conversation or inbox at the same moment "
                "(its owner is changing); nothing of this batch was stored: send again"
            ) from exc

    def _write_batch(
        self,
        batch: Sequence[NewMessage],
        inbox_items: Sequence[InboxItem] = (),
        cursors: dict[tuple[bytes, bytes], int] | None = None,
        local_users: frozenset[bytes] | None = None,
        epoch: int = 0,
        hinted: list[bytes] | None = None,
    ) -> Written:
        """One writer batch in one transaction: new messages (sequence numbers,
        rows, inbox entries of the members in ``local_users``, all when None),
        inbox entries for messages stored elsewhere (``inbox_items``), and
        terminal cursors (user id, device id) -> position to advance. New rows
        carry ``epoch``, their stamp (``digest.row_stamp``: the ring epoch of
        the owner's lease and its clock).

        Duplicates (same conversation and dedup index) return the stored
        message instead of a new one, also within the batch; an inbox item
        already in the inbox returns its position. Either the whole batch is
        stored or none of it is.

        ``hinted`` (a list): take the inbox heads this store committed last
        (``_inbox_heads``) instead of reading them, and put in the list the
        users whose heads were taken so; the compare-and-set at the end fails
        the batch (nothing stored) when one was out of date. A 10,000-member
        group's message read 10,000 heads otherwise.
        """
        results: list[Appended] = []
        placed: list[InboxPlaced] = []
        m = s.messages
        with self.engine.begin() as conn:
            if cursors:
                advance_cursors(conn, cursors)
            if not batch and not inbox_items:
                return Written(results, placed, epoch)
            # One statement per kind of lookup for the whole batch.
            stored = _stored_by_dedup(conn, {(item.conv_id, item.dedup) for item in batch})
            conv_ids = list({item.conv_id for item in batch})
            last_seq: dict[bytes, int] = {}
            read_seq: dict[bytes, int] = {}
            existing_convs: set[bytes] = set()
            if conv_ids:
                last_seq = {
                    bytes(k): int(v)
                    for k, v in driver_in(conn, "SELECT conv_id, last_seq FROM conversations WHERE conv_id IN", conv_ids, lock=True)
                }
                existing_convs = set(last_seq)
                read_seq = dict(last_seq)  # as read: the compare-and-set below expects them unchanged
                # Rows that reached this node as another node's copies count too,
                # so a sequence number is never given twice.
                for k, top in driver_in(
                    conn, "SELECT conv_id, MAX(seq) FROM messages WHERE conv_id IN", conv_ids, "GROUP BY conv_id"
                ):
                    key = bytes(k)
                    if key in last_seq and int(top) > last_seq[key]:
                        last_seq[key] = int(top)
            inbox_users = {
                u for item in batch for u in item.members if local_users is None or u in local_users
            } | {item.user_id for item in inbox_items}
            kept = self._inbox_heads if hinted is not None else {}
            heads = {u: kept[u] for u in inbox_users if u in kept}
            if hinted is not None:
                hinted.extend(heads)
            unknown = [u for u in inbox_users if u not in heads]
            if unknown:
                heads.update((bytes(k), int(v)) for k, v in driver_in(
                    conn, "SELECT user_id, inbox_head FROM accounts WHERE user_id IN", unknown, lock=True
                ))
            read_heads = dict(heads)
            if inbox_users - set(heads):
                raise RequestError("no such user", Code.NO_SUCH_USER)
            seen: dict[tuple[bytes, bytes], Appended] = {}
            redo: list[tuple[int, InboxItem]] = []
            new_convs: dict[bytes, NewMessage] = {}
            msg_rows: list[dict[str, Any]] = []
            plain: dict[tuple[bytes, int], bytes] = {}  # the new rows' contents, not sealed
            copy_rows: list[dict[str, Any]] = []  # message rows kept beside an inbox entry
            inbox_rows: list[dict[str, Any]] = []
            touched_users: set[bytes] = set()
            for item in batch:
                key = (item.conv_id, item.dedup)
                if key in seen:
                    first = seen[key]
                    results.append(replace(first, duplicate=True, inbox={}))
                    continue
                old = stored.get(key)
                if old is not None:
                    content = self._open_message(item.conv_id, old.seq, old.content)
                    dup = Appended(old.seq, old.created_ms, True, content, {}, bytes(old.content))
                    seen[key] = dup
                    results.append(dup)
                    if local_users is not None:
                        # In a cluster a member's user may have moved here since the
                        # first attempt: make sure its inbox has the message.
                        for user_id in item.members:
                            if user_id in local_users:
                                redo.append((len(results) - 1, InboxItem(
                                    user_id, item.conv_id, old.seq, item.dedup, old.created_ms, bytes(old.content)
                                )))
                    continue
                if item.conv_id not in last_seq:
                    new_convs[item.conv_id] = item
                    last_seq[item.conv_id] = 0
                seq = last_seq[item.conv_id] + 1
                last_seq[item.conv_id] = seq
                sealed = self._sealer.seal(item.content, message_ad(item.conv_id, seq))
                plain[(item.conv_id, seq)] = item.content
                msg_rows.append(dict(
                    conv_id=item.conv_id, seq=seq, dedup=item.dedup, created_ms=item.created_ms, content=sealed,
                    epoch=epoch,
                ))
                positions: dict[bytes, int] = {}
                for user_id in item.members:
                    if local_users is not None and user_id not in local_users:
                        continue
                    heads[user_id] += 1
                    touched_users.add(user_id)
                    positions[user_id] = heads[user_id]
                    inbox_rows.append(
                        dict(user_id=user_id, pos=heads[user_id], conv_id=item.conv_id, seq=seq, epoch=epoch)
                    )
                appended = Appended(seq, item.created_ms, False, item.content, positions, sealed)
                seen[key] = appended
                results.append(appended)
            if inbox_items or redo:
                # In one call: an entry asked for by another node and a
                # retried send's own entry for the same message and user in
                # one batch take one position (two would carry one stamp,
                # and repair keeps both).
                every = self._place_inbox_items(
                    conn, [*inbox_items, *(it for _, it in redo)], heads, inbox_rows, touched_users, msg_rows,
                    copy_rows, epoch,
                )
                placed, again = every[: len(inbox_items)], every[len(inbox_items) :]
                for (index, it), where in zip(redo, again, strict=True):
                    if where.new:
                        results[index] = replace(results[index], inbox={**results[index].inbox, it.user_id: where.pos})
            if new_convs:
                driver_many(conn, "INSERT INTO conversations (conv_id, last_seq) VALUES (?, ?)",
                            [(k, 0) for k in new_convs])
                driver_many(conn, "INSERT INTO conv_members (conv_id, user_id) VALUES (?, ?)",
                            [(k, u) for k, item in new_convs.items() for u in sorted(set(item.members))])
            # The hot statements go to the driver as fixed SQL, many rows each.
            if msg_rows:
                driver_many(conn, _INSERT_MESSAGE, [
                    (r["conv_id"], r["seq"], r["dedup"], r["created_ms"], r["content"], r["epoch"]) for r in msg_rows
                ])
            if copy_rows:
                # A move between backends may be copying the same rows right now.
                insert_missing(conn, m, copy_rows)
            apply_effects(self, conn, [*msg_rows, *copy_rows], plain)
            if inbox_rows:
                driver_many(conn, _INSERT_INBOX, [
                    (r["user_id"], r["pos"], r["conv_id"], r["seq"], r["epoch"]) for r in inbox_rows
                ])
            # Compare-and-set: the heads must still be what this batch read.
            changed = [(v, k, read_seq.get(k, 0)) for k, v in last_seq.items() if k in new_convs or k in existing_convs]
            if changed and driver_many(conn, _SET_LAST_SEQ, changed) != len(changed):
                raise IntegrityError("conversations.last_seq", None, ValueError("moved by another writer"))
            if touched_users and driver_many(
                conn, _SET_INBOX_HEAD, [(heads[u], u, read_heads[u]) for u in touched_users]
            ) != len(touched_users):
                raise IntegrityError("accounts.inbox_head", None, ValueError("moved by another writer"))
        if len(self._inbox_heads) + len(touched_users) > _KEPT_HEADS:
            self._inbox_heads.clear()
        self._inbox_heads.update((u, heads[u]) for u in touched_users)  # committed
        return Written(results, placed, epoch)

    def _place_inbox_items(
        self,
        conn: Any,
        items: Sequence[InboxItem],
        heads: dict[bytes, int],
        inbox_rows: list[dict[str, Any]],
        touched_users: set[bytes],
        msg_rows: list[dict[str, Any]],
        copy_rows: list[dict[str, Any]],
        epoch: int = 0,
    ) -> list[InboxPlaced]:
        """Inbox entries for messages whose conversation another node owns; the
        message row is kept here too (if absent) so the inbox reads locally.
        A row held here at that (conversation, seq), or with that message at
        another seq, under an equal or lower stamp than the item's, was never
        acknowledged (docs/consistency.md, "Epochs on rows"): the item's
        message replaces it (the conversation's owner numbers a slot again
        within an epoch only after undoing the first write)."""
        m = s.messages
        users = {it.user_id for it in items}
        # Pairs, each an equality on an index (ix_inbox_message; the messages'
        # key and UNIQUE (conv_id, dedup)): an IN over each column let the
        # database scan whole inboxes or conversations on every batch.
        already = {
            (bytes(u), bytes(c), int(q)): int(pos)
            for u, c, q, pos in driver_pairs(
                conn, "SELECT user_id, conv_id, seq, pos FROM inbox WHERE", "(conv_id = ? AND seq = ?)",
                list({(it.conv_id, it.seq) for it in items}))
            if bytes(u) in users
        }
        held = {  # (conv, seq) -> (dedup, epoch) of the rows here that the items may meet
            (bytes(c), int(q)): (bytes(dd), int(e))
            for c, q, dd, e in [
                *driver_pairs(conn, _HELD_MESSAGES, "(conv_id = ? AND seq = ?)", list({(it.conv_id, it.seq) for it in items})),
                *driver_pairs(conn, _HELD_MESSAGES, "(conv_id = ? AND dedup = ?)",
                              list({(it.conv_id, it.dedup) for it in items})),
            ]
        }
        wanted = {(it.conv_id, it.seq, it.dedup) for it in items}
        have_msgs = {(c, q) for (c, q), (dd, _e) in held.items() if (c, q, dd) in wanted}
        have_msgs |= {(r["conv_id"], r["seq"]) for r in (*msg_rows, *copy_rows)}
        placed: list[InboxPlaced] = []
        for it in items:
            key = (it.user_id, it.conv_id, it.seq)
            item_epoch = it.epoch or epoch
            if (it.conv_id, it.seq) not in have_msgs:
                stale = [
                    (c, q) for (c, q), (dd, e) in held.items()
                    if c == it.conv_id and ((q == it.seq) != (dd == it.dedup)) and e <= item_epoch
                ]
                for c, q in stale:
                    conn.execute(m.delete().where(and_(m.c.conv_id == c, m.c.seq == q)))
                    del held[(c, q)]
                if not any(c == it.conv_id and (q == it.seq or dd == it.dedup) for (c, q), (dd, _e) in held.items()):
                    copy_rows.append(dict(
                        conv_id=it.conv_id, seq=it.seq, dedup=it.dedup, created_ms=it.created_ms, content=it.sealed,
                        epoch=item_epoch,
                    ))
                have_msgs.add((it.conv_id, it.seq))
            if key in already:
                placed.append(InboxPlaced(already[key], False))
                continue
            heads[it.user_id] += 1
            touched_users.add(it.user_id)
            already[key] = heads[it.user_id]
            inbox_rows.append(
                dict(user_id=it.user_id, pos=heads[it.user_id], conv_id=it.conv_id, seq=it.seq, epoch=epoch)
            )
            placed.append(InboxPlaced(heads[it.user_id], True))
        return placed

    def undo_writes(
        self, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]], stamp: int = 0
    ) -> int:
        """Remove the rows of a write that never reached its write quorum (so
        was never acknowledged): exactly these (conversation, seq, dedup) and
        (user, position, conversation, seq) with the write's ``stamp`` (0: any),
        and move the counters back to the highest row left, so the next owner's
        numbering leaves no gap. A row of the same slot and message written
        later (a retry placed again, under a higher stamp) stays: an undo that
        arrives late must not take back an acknowledged write. Returns the
        number of rows removed."""
        m, c, a, i = s.messages, s.conversations, s.accounts, s.inbox
        removed = 0
        with self.engine.begin() as conn:
            for conv, seq, dedup in messages:
                where = and_(m.c.conv_id == conv, m.c.seq == seq, m.c.dedup == dedup)
                removed += conn.execute(delete(m).where(and_(where, m.c.epoch == stamp) if stamp else where)).rowcount
            for user, pos, conv, seq in inbox:
                where = and_(i.c.user_id == user, i.c.pos == pos, i.c.conv_id == conv, i.c.seq == seq)
                removed += conn.execute(delete(i).where(and_(where, i.c.epoch == stamp) if stamp else where)).rowcount
            for conv in {x[0] for x in messages}:
                top = conn.execute(select(func.max(m.c.seq)).where(m.c.conv_id == conv)).scalar() or 0
                conn.execute(update(c).where(and_(c.c.conv_id == conv, c.c.last_seq > top)).values(last_seq=top))
            for user in {x[0] for x in inbox}:
                top = conn.execute(select(func.max(i.c.pos)).where(i.c.user_id == user)).scalar() or 0
                conn.execute(update(a).where(and_(a.c.user_id == user, a.c.inbox_head > top)).values(inbox_head=top))
        return removed

    def get_message(self, conv_id: bytes, seq: int) -> StoredMessage | None:
        """One message (opened; empty content when recalled or burned), or None."""
        m = s.messages
        with self.engine.connect() as conn:
            row = conn.execute(
                select(m.c.created_ms, m.c.content).where(and_(m.c.conv_id == conv_id, m.c.seq == seq))
            ).first()
        if row is None:
            return None
        return StoredMessage(conv_id, seq, int(row.created_ms), self._open_message(conv_id, seq, bytes(row.content)))

    def read_history(
        self, conv_id: bytes, before_seq: int, after_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """A page of a conversation, oldest first, and whether more lie beyond it.

        With ``after_seq`` (0 = from the start) the oldest after it; otherwise
        the newest before ``before_seq`` (0 = the latest).
        """
        m = s.messages
        q = select(m.c.seq, m.c.created_ms, m.c.content, m.c.epoch).where(m.c.conv_id == conv_id)
        forward = after_seq is not None
        if forward:
            q = q.where(m.c.seq > after_seq).order_by(m.c.seq.asc())
        else:
            if before_seq > 0:
                q = q.where(m.c.seq < before_seq)
            q = q.order_by(m.c.seq.desc())
        with self.engine.connect() as conn:
            rows = list(conn.execute(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        if not forward:
            rows.reverse()
        return [
            StoredMessage(conv_id, r.seq, r.created_ms, self._open_message(conv_id, r.seq, r.content), int(r.epoch))
            for r in rows
        ], more

    def conversation_head(self, conv_id: bytes) -> int:
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(s.messages.c.seq)).where(s.messages.c.conv_id == conv_id)).scalar()
            return int(top or 0)

    def open_sealed_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        return self._open_message(conv_id, seq, sealed)



_BY_SLOT = itemgetter("conv_id", "seq")  # a row's (conversation, seq): in C, for every row a batch writes


def apply_effects(
    store: StoreBase, conn: Any, rows: Sequence[dict[str, Any]], plain: dict[tuple[bytes, int], bytes]
) -> None:
    """Apply the effects of message rows just inserted (in order); ``plain``
    has the contents of rows that are not sealed yet at hand."""
    if store._effect_of is None:
        return
    m = s.messages
    for row in sorted(rows, key=_BY_SLOT):
        conv, seq = row["conv_id"], row["seq"]
        content = plain.get((conv, seq))
        if content is None:
            content = store._open_message(conv, seq, row["content"])
        if not content:
            continue
        effect = store._effect_of(content, seq)
        if effect is None:
            continue
        target, transform = effect
        if not 0 < target < seq:
            continue
        old = conn.execute(select(m.c.content).where(and_(m.c.conv_id == conv, m.c.seq == target))).first()
        if old is None or not old.content:
            continue  # not here (an inbox copy of a message this user never had), or gone already
        changed = transform(store._open_message(conv, target, bytes(old.content)))
        sealed = b"" if changed is None else store._sealer.seal(changed, row_ad("messages", conv, target))
        conn.execute(update(m).where(and_(m.c.conv_id == conv, m.c.seq == target)).values(content=sealed))


_INSERT_MESSAGE = "INSERT INTO messages (conv_id, seq, dedup, created_ms, content, epoch) VALUES (?, ?, ?, ?, ?, ?)"

_INSERT_INBOX = "INSERT INTO inbox (user_id, pos, conv_id, seq, epoch) VALUES (?, ?, ?, ?, ?)"

_SET_LAST_SEQ = "UPDATE conversations SET last_seq = ? WHERE conv_id = ? AND last_seq = ?"

_SET_INBOX_HEAD = "UPDATE accounts SET inbox_head = ? WHERE user_id = ? AND inbox_head = ?"

_KEPT_HEADS = 200_000  # inbox heads kept between batches (about 30 MB at most); all are dropped beyond it


class _Stored(NamedTuple):
    conv_id: bytes
    dedup: bytes
    seq: int
    created_ms: int
    content: bytes


def _stored_by_dedup(conn: Any, keys: set[tuple[bytes, bytes]]) -> dict[tuple[bytes, bytes], Any]:
    """The stored messages among ``keys`` (conversation id, dedup index).

    Each pair is an equality on both columns of the UNIQUE (conv_id, dedup)
    index, so every dialect finds them through it: a lookup costs the same
    whatever the table holds. (``dedup IN (...)`` alone cannot use that index
    and scanned the messages table on every batch.)"""
    found: dict[tuple[bytes, bytes], Any] = {}
    for conv_id, dedup, seq, created_ms, content in driver_pairs(
        conn, "SELECT conv_id, dedup, seq, created_ms, content FROM messages WHERE", "(conv_id = ? AND dedup = ?)",
        list(keys),
    ):
        found[(bytes(conv_id), bytes(dedup))] = _Stored(bytes(conv_id), bytes(dedup), int(seq), int(created_ms),
                                                        bytes(content))
    return found


# --- merging copies: of two values of one slot, the higher stamp wins ---------
#
# Used by ``apply_copies`` (write quorum, catch-up, repair). Under the quorum
# protocol an acknowledged row is never the lower stamp of a slot it shares
# with another value (docs/consistency.md, "Epochs on rows"); between equal
# stamps what is here stays (repair settles those by ``digest.winner``).

_IN_CHUNK = 500
_HELD_MESSAGES = "SELECT conv_id, seq, dedup, epoch FROM messages WHERE"


def merge_message_rows(
    conn: Any, incoming: Sequence[tuple[bytes, int, bytes, int, bytes, int]], owner_write: bool = False
) -> list[dict[str, Any]]:
    """The message rows of ``incoming`` to insert, once every row here they
    beat is removed: a row at the same (conversation, seq) holding another
    message under a lower epoch, or the same message (dedup index) at
    another seq under a lower epoch (at an equal epoch, the earlier seq stays).

    ``owner_write``: the rows are an owner's new write, sent under its lease:
    they win an equal epoch too. The owner numbers a slot once per epoch
    unless it undid the first write (never acknowledged), and an undo that
    missed this node must not make it keep the undone row and still count
    as a copy of the new one."""
    m = s.messages
    held: dict[tuple[bytes, int], tuple[bytes, int]] = {}  # (conv, seq) -> (dedup, epoch)
    spans: dict[bytes, tuple[int, int]] = {}  # conv -> the lowest and highest seq coming
    for r in incoming:
        conv, seq = bytes(r[0]), int(r[1])
        lo, hi = spans.get(conv, (seq, seq))
        spans[conv] = (min(lo, seq), max(hi, seq))
    # Only the rows a copy can meet: its own slots, and its messages wherever they sit here.
    for conv, seq, dedup, epoch in [
        *driver_pairs(conn, _HELD_MESSAGES, "(conv_id = ? AND seq >= ? AND seq <= ?)",
                      [(c, lo, hi) for c, (lo, hi) in spans.items()]),
        *driver_pairs(conn, _HELD_MESSAGES, "(conv_id = ? AND dedup = ?)",
                      list({(bytes(x[0]), bytes(x[2])) for x in incoming})),
    ]:
        held[(bytes(conv), int(seq))] = (bytes(dedup), int(epoch))
    by_dedup = {(c, dd): q for (c, q), (dd, _e) in held.items()}
    rows: list[dict[str, Any]] = []
    for conv, seq, dedup, created, sealed, epoch in incoming:
        here = held.get((conv, seq))
        if here is not None:
            if here[0] == dedup or here[1] > epoch or (here[1] == epoch and not owner_write):
                continue  # the same message, or another one that stays
        other = by_dedup.get((conv, dedup))
        if other is not None and other != seq and (held[(conv, other)][1], -other) >= (epoch + owner_write, -seq):
            continue  # this message stays where it is here
        if here is not None:
            conn.execute(m.delete().where(and_(m.c.conv_id == conv, m.c.seq == seq)))
            by_dedup.pop((conv, here[0]), None)
        if other is not None and other != seq:
            conn.execute(m.delete().where(and_(m.c.conv_id == conv, m.c.seq == other)))
            held.pop((conv, other), None)
        held[(conv, seq)] = (dedup, epoch)
        by_dedup[(conv, dedup)] = seq
        rows.append(dict(conv_id=conv, seq=seq, dedup=dedup, created_ms=created, content=sealed, epoch=epoch))
    return rows


class MessagesTable(CopiedTable):
    """The slots of a conversation. Its rows travel paged (``conversation_copies``),
    and beside the inbox entries that point to them (``user_copies``)."""

    name, wire, table, key_column, kinds = "messages", 2, s.messages, "conv_id", ("conv",)
    slots_of = "conv"
    columns = "conv, seq, dedup, created (ms), sealed content, stamp (digest.row_stamp)"

    def unpack(self, raw: Any) -> Row:
        # A row from a node before schema 6 has no stamp: 0, older than any under the quorum protocol.
        cv, q, dd, t, b = raw[:5]
        return bytes(cv), int(q), bytes(dd), int(t), bytes(b), int(raw[5]) if len(raw) > 5 else 0

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        return self.apply_slots(repo, conn, rows, False)

    def apply_slots(self, repo: StoreBase, conn: Any, rows: list[Row], owner_write: bool) -> int:
        """Messages missing here, or winning their slot over the row here
        (``merge_message_rows``: the higher stamp), their effects applied;
        the conversations' numbering moves up to them."""
        m = s.messages
        added = 0
        fresh = merge_message_rows(conn, rows, owner_write)  # a slot's higher stamp wins
        if fresh:
            insert_missing(conn, m, fresh)
            added += len(fresh)
            apply_effects(repo, conn, fresh, {})
        tops: dict[bytes, int] = {}
        for conv, seq, *_ in rows:
            tops[conv] = max(tops.get(conv, 0), seq)
        driver_many(conn, "UPDATE conversations SET last_seq = ? WHERE conv_id = ? AND last_seq < ?",
                    [(v, k, v) for k, v in tops.items()])
        return added

    def slots(self, conn: Any, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        m = s.messages
        out: dict[bytes, dict[int, bytes]] = {k: {} for k in keys}
        q = select(
            m.c.conv_id, m.c.seq, m.c.dedup, m.c.created_ms, (func.length(m.c.content) == 0).label("gone"), m.c.epoch
        )
        for r in conn.execute(q.where(m.c.conv_id.in_(keys))):
            out[bytes(r.conv_id)][int(r.seq)] = d.message_hash(
                bytes(r.dedup), int(r.created_ms), bool(r.gone), int(r.epoch)
            )
        return out

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.messages.c.conv_id, keys)

    def forget(self, conn: Any, kind: str, keys: list[bytes]) -> int:
        """Nothing by key: a message row can also serve an inbox here, so
        ``forget`` deletes those that no key held here needs any more."""
        return 0


MESSAGES = MessagesTable()
