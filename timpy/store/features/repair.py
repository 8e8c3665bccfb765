"""What repair between replicas reads and writes (a storage mixin of
``Repository``): content digests of keys (``digest``), the rows of given
slots, and applying rows that replace a slot held with another value.

A key is ``("conv", conversation id)``, whose slots are its messages by
sequence number, ``("user", user id)``, whose slots are its inbox by
position, or ``("att", attachment id)``, whose slots are its chunks by index. Terminal cursors are left out of the digests: they move forward
with every acknowledgement at the owner and only a stale one costs a
terminal a message it drops as already seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, insert, or_, select, update

from timpy.store import digest as d
from timpy.store import schema as s
from timpy.store.features.base import driver_many
from timpy.store.features.copies import CopiesStore
from timpy.store.rows import Copies
from timpy.store.tables import KEYS

_PAST_THE_END = 2**62  # "after" beyond every slot: only a key's state, no rows
_IN_CHUNK = 500


class RepairProtocol(Protocol):
    def repair_roots(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def repair_buckets(self, kind: str, key: bytes) -> tuple[bytes, dict[int, bytes]] | None: ...

    def repair_slots(self, kind: str, key: bytes, buckets: Sequence[int]) -> dict[int, bytes]: ...

    def repair_keys(self, kind: str, after: bytes, upto: bytes | None, limit: int) -> list[bytes]: ...

    def repair_rows(self, kind: str, key: bytes, slots: Sequence[int], with_meta: bool) -> Copies: ...

    def inbox_holds(self, user_id: bytes, messages: Sequence[tuple[bytes, int]]) -> set[tuple[bytes, int]]: ...

    def apply_repair(self, kind: str, key: bytes, copies: Copies, replace: Sequence[int]) -> tuple[int, int]: ...

    def drop_unreferenced_messages(self, replica_of: Callable[[bytes], bool]) -> int: ...


class RepairStore(CopiesStore):

    # --- digests --------------------------------------------------------

    def _slots(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        return KEYS[kind].slot_table().slots(conn, keys)

    def _metas(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, bytes]:
        """The meta hash of each key held here (keys not held are absent): the
        digest items of every table of its state (``CopiedTable.digest``)."""
        items: dict[bytes, list[tuple[object, ...]]] = {}
        tables = KEYS[kind].state_tables()
        # The tables whose rows make a key held first, then what the others add to held keys.
        for table in [t for t in tables if t.marks_held] + [t for t in tables if not t.marks_held]:
            for key, item in table.digest(conn, kind, keys):
                if table.marks_held:
                    entry = items.setdefault(key, [])
                elif key in items:
                    entry = items[key]
                else:
                    continue
                if item is not None:
                    entry.append(item)
        return {k: d.meta_hash(v) for k, v in items.items()}

    def repair_roots(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The root digest of each key held here (keys not held are absent)."""
        out: dict[bytes, bytes] = {}
        keys = list(keys)
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start : start + _IN_CHUNK]
                metas = self._metas(conn, kind, chunk)
                slots = self._slots(conn, kind, list(metas))
                for k, meta in metas.items():
                    out[k] = d.root(meta, d.buckets(slots[k]))
        return out

    def repair_buckets(self, kind: str, key: bytes) -> tuple[bytes, dict[int, bytes]] | None:
        """A key's meta hash and bucket digests; None when it is not held here."""
        with self.engine.connect() as conn:
            metas = self._metas(conn, kind, [key])
            if key not in metas:
                return None
            return metas[key], d.buckets(self._slots(conn, kind, [key])[key])

    def repair_slots(self, kind: str, key: bytes, buckets: Sequence[int]) -> dict[int, bytes]:
        """The slot hashes of a key in the given buckets."""
        with self.engine.connect() as conn:
            return d.in_buckets(self._slots(conn, kind, [key])[key], buckets)

    def repair_keys(self, kind: str, after: bytes, upto: bytes | None, limit: int) -> list[bytes]:
        """The keys held here with ``after < key <= upto`` (no upper end when None), in order."""
        col = KEYS[kind].table.c[KEYS[kind].key]
        q = select(col).where(col > after)
        if upto is not None:
            q = q.where(col <= upto)
        with self.engine.connect() as conn:
            return [bytes(r[0]) for r in conn.execute(q.order_by(col.asc()).limit(limit))]

    # --- rows -----------------------------------------------------------

    def repair_rows(self, kind: str, key: bytes, slots: Sequence[int], with_meta: bool) -> Copies:
        """The rows of a key's given slots as ``Copies`` (for an inbox, with the
        message rows its entries point to), and its state when ``with_meta``."""
        wanted = sorted(set(int(x) for x in slots))
        if kind == "att":
            copies = self.attachment_copies(key, _PAST_THE_END, 0)
            if not with_meta:
                _without_state(copies, kind)
            c = s.attachment_chunks
            with self.engine.connect() as conn:
                for start in range(0, len(wanted), _IN_CHUNK):
                    rows = conn.execute(select(c.c.idx, c.c.content).where(
                        and_(c.c.att_id == key, c.c.idx.in_(wanted[start : start + _IN_CHUNK]))
                    ))
                    copies.attachment_chunks += [(key, int(r.idx), bytes(r.content)) for r in rows]
            return copies
        if kind == "conv":
            copies = self.conversation_copies(key, _PAST_THE_END, 0)
            if not with_meta:
                _without_state(copies, kind)
            if wanted:
                m = s.messages
                with self.engine.connect() as conn:
                    for start in range(0, len(wanted), _IN_CHUNK):
                        rows = conn.execute(
                            select(m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                            .where(and_(m.c.conv_id == key, m.c.seq.in_(wanted[start : start + _IN_CHUNK])))
                        )
                        copies.messages += [
                            (key, int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content), int(r.epoch))
                            for r in rows
                        ]
            return copies
        copies = self.user_copies(key, _PAST_THE_END, 0)
        if not copies:  # no account here
            return copies
        if not with_meta:
            _without_state(copies, kind)
        if wanted:
            i, m = s.inbox, s.messages
            with self.engine.connect() as conn:
                for start in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[start : start + _IN_CHUNK]
                    entries = list(conn.execute(
                        select(i.c.pos, i.c.conv_id, i.c.seq, i.c.epoch)
                        .where(and_(i.c.user_id == key, i.c.pos.in_(chunk)))
                    ))
                    copies.inbox += [(key, int(r.pos), bytes(r.conv_id), int(r.seq), int(r.epoch)) for r in entries]
                    rows = conn.execute(
                        select(m.c.conv_id, m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                        .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
                        .where(and_(i.c.user_id == key, i.c.pos.in_(chunk)))
                    )
                    copies.messages += [
                        (bytes(r.conv_id), int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content),
                         int(r.epoch))
                        for r in rows
                    ]
        return copies

    def drop_unreferenced_messages(self, replica_of: Callable[[bytes], bool]) -> int:
        """Delete the message rows of conversations this node holds no copy
        of (no conversation row here, and ``replica_of(conv_id)`` False) that
        no inbox entry here points to: left by an undo that missed this node,
        or by an inbox entry that lost its slot. Nothing reads them and no
        repair compares them (only a conversation's replicas do), so they
        could only mislead a later owner. Returns the number of rows deleted."""
        m, i, c = s.messages, s.inbox, s.conversations
        deleted = 0
        with self.engine.begin() as conn:
            held = select(c.c.conv_id).where(c.c.conv_id == m.c.conv_id).exists()
            convs = [bytes(r[0]) for r in conn.execute(select(m.c.conv_id).where(~held).distinct())]
            stale = [c for c in convs if not replica_of(c)]
            referenced = select(i.c.pos).where(and_(i.c.conv_id == m.c.conv_id, i.c.seq == m.c.seq)).exists()
            for start in range(0, len(stale), _IN_CHUNK):
                chunk = stale[start : start + _IN_CHUNK]
                deleted += conn.execute(m.delete().where(and_(m.c.conv_id.in_(chunk), ~referenced))).rowcount
        return deleted

    def inbox_holds(self, user_id: bytes, messages: Sequence[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Of the (conv id, seq) given, those in the user's inbox here."""
        i = s.inbox
        wanted = {(bytes(c), int(q)) for c, q in messages}
        if not wanted:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(select(i.c.conv_id, i.c.seq).where(and_(
                i.c.user_id == user_id, i.c.conv_id.in_(list({c for c, _ in wanted})),
                i.c.seq.in_(list({q for _, q in wanted})),
            )))
            return {(bytes(r.conv_id), int(r.seq)) for r in rows} & wanted

    def apply_repair(self, kind: str, key: bytes, copies: Copies, replace: Sequence[int]) -> tuple[int, int]:
        """Store a replica's rows of one key, as ``apply_copies`` does, first
        clearing the slots in ``replace`` (held here with the value that lost,
        see ``digest.winner``). A message sits in one slot of a conversation
        (its dedup index is unique there): a second copy at a later slot gives
        way to the earlier one. Returns (rows added, conflicting slots cleared)."""
        replace = {int(x) for x in replace}
        cleared = 0
        if kind == "att":  # a chunk slot is held or not: nothing to replace
            return self.apply_copies(copies), 0
        if kind == "conv":
            with self.engine.begin() as conn:
                cleared, changed = self._clear_message_slots(conn, key, copies, replace)
                raised = _raise_stamps(conn, copies.messages, [])
            return self.apply_copies(copies) + changed + raised, cleared
        rows = [r for r in copies.inbox if r[0] == key]
        copies.inbox = [r for r in copies.inbox if r[0] != key]
        beside = list(copies.messages)
        added = self.apply_copies(copies)  # the account (and messages) first
        # Inbox slots merge slot by slot (``digest.winner``), with no regard
        # to the same message in another slot: so the result is the same
        # whatever order replicas meet in. A message left in no slot is
        # appended again by the repairing node.
        i, a = s.inbox, s.accounts
        with self.engine.begin() as conn:
            for user, pos, conv, seq, epoch in rows:
                here = conn.execute(select(i.c.conv_id, i.c.seq).where(and_(i.c.user_id == user, i.c.pos == pos))).first()
                if here is not None:
                    if (bytes(here.conv_id), int(here.seq)) == (conv, seq) or pos not in replace:
                        continue
                    conn.execute(i.delete().where(and_(i.c.user_id == user, i.c.pos == pos)))
                    cleared += 1
                if not _one_inbox_slot(conn, user, pos, conv, seq, epoch):
                    continue
                conn.execute(insert(i).values(user_id=user, pos=pos, conv_id=conv, seq=seq, epoch=epoch))
                added += 1
            if rows:
                top = max(r[1] for r in rows)
                conn.execute(update(a).where(and_(a.c.user_id == key, a.c.inbox_head < top)).values(inbox_head=top))
            added += _raise_stamps(conn, beside, rows)
        return added, cleared

    @staticmethod
    def _clear_message_slots(conn: Any, key: bytes, copies: Copies, replace: set[int]) -> tuple[int, int]:
        """Make room for a replica's message rows of conversation ``key``
        (dropping from ``copies`` those that must not land); returns the slots
        cleared and the rows whose state changed (recalled or burned)."""
        m = s.messages
        cleared = changed = 0
        keep = []
        for conv, seq, dedup, created, content, epoch in [row for row in copies.messages if row[0] == key]:
            here = list(conn.execute(
                select(m.c.seq, m.c.dedup, m.c.created_ms, m.c.epoch)
                .where(and_(m.c.conv_id == conv, or_(m.c.seq == seq, m.c.dedup == dedup)))
            ))
            drop = False
            for r in here:
                if int(r.seq) == seq and bytes(r.dedup) == dedup and not content:
                    # the same message, recalled or burned on the replica: so here too
                    changed += conn.execute(
                        update(m).where(and_(m.c.conv_id == conv, m.c.seq == seq, func.length(m.c.content) > 0))
                        .values(content=b"")
                    ).rowcount
                elif int(r.seq) == seq and seq in replace and (
                    bytes(r.dedup) != dedup or int(r.created_ms) != int(created)
                ):  # another message here, or this one with another time (the slot hashes differ either way)
                    conn.execute(m.delete().where(and_(m.c.conv_id == conv, m.c.seq == seq)))
                    cleared += 1
                elif int(r.seq) != seq and bytes(r.dedup) == dedup:
                    # the same message at another slot here: the higher epoch stays, then the earlier slot
                    if (int(r.epoch), -int(r.seq)) < (epoch, -seq):
                        conn.execute(m.delete().where(and_(m.c.conv_id == conv, m.c.seq == int(r.seq))))
                        cleared += 1
                    else:
                        drop = True
            if not drop:
                keep.append((conv, seq))
        copies.messages = [row for row in copies.messages if row[0] != key or (row[0], row[1]) in keep]
        return cleared, changed


def _raise_stamps(
    conn: Any, messages: Sequence[tuple[bytes, int, bytes, int, bytes, int]], inbox: Sequence[tuple[bytes, int, bytes, int, int]]
) -> int:
    """The same message at the same slot, held here under a lower stamp than
    the replica's: it takes the higher stamp, and a message row its time too
    (``digest.winner`` joins one item to its higher stamp; without this the
    two copies of one message kept their stamps, their digests never met and
    the key was compared again on every pass; a message row kept beside an
    inbox entry could keep another time than the conversation's). Which
    message a slot holds does not change. Returns the rows changed."""
    raised = 0
    if messages:
        raised += driver_many(
            conn,
            "UPDATE messages SET epoch = ?, created_ms = ? WHERE conv_id = ? AND seq = ? AND dedup = ? AND epoch < ?",
            [(int(e), int(t), bytes(c), int(q), bytes(dd), int(e)) for c, q, dd, t, _content, e in messages],
        )
    if inbox:
        raised += driver_many(
            conn, "UPDATE inbox SET epoch = ? WHERE user_id = ? AND pos = ? AND conv_id = ? AND seq = ? AND epoch < ?",
            [(int(e), bytes(u), int(p), bytes(c), int(q), int(e)) for u, p, c, q, e in inbox],
        )
    return raised


def _without_state(copies: Copies, kind: str) -> None:
    """Only a key's slots (and its anchor: an inbox lands beside its account)."""
    k = KEYS[kind]
    for table in k.state_tables():
        if table.name != k.anchor:
            setattr(copies, table.name, [])


def _one_inbox_slot(conn: Any, user: bytes, pos: int, conv: bytes, seq: int, epoch: int) -> bool:
    """Before repair puts (conv, seq) at ``pos`` of a user's inbox: False when
    the same message sits at another position under a higher epoch; one under
    a lower epoch is removed (at an equal epoch both stay)."""
    i = s.inbox
    for r in conn.execute(select(i.c.pos, i.c.epoch).where(
        and_(i.c.user_id == user, i.c.conv_id == conv, i.c.seq == seq, i.c.pos != pos)
    )):
        if int(r.epoch) > epoch:
            return False
        if int(r.epoch) < epoch:
            conn.execute(i.delete().where(and_(i.c.user_id == user, i.c.pos == int(r.pos))))
    return True
