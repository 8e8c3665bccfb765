"""The repository: every read and write timpy makes, as synchronous
transactions meant to run in a worker thread (see ``Store``).

Payload plaintexts come in and go out; sealing and opening happen here, with
associated data that binds each sealed value to its table, key and sequence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio
from sqlalchemy import Engine, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from timpy.concurrency import to_worker
from timpy.crypto.seal import Sealer, row_ad
from timpy.errors import Code, ConfigError, KeyMismatchError, RequestError, StorageError
from timpy.store import schema as s
from timpy.store.migrations import steps_after
from timpy.store.repair import RepairQueries, merge_inbox_rows, merge_message_rows

log = logging.getLogger("timpy.store")

T = TypeVar("T")
_CANARY = b"timpy cluster key check"


class ConcurrentWriteError(StorageError):
    """Another writer took a conversation or inbox position first (two nodes
    that each believe they own a key, on one shared database). The batch was
    rolled back whole; sending again is safe."""


@dataclass(frozen=True)
class AccountRow:
    user_id: bytes
    secret: bytes  # opened: the argon2id hash
    profile: bytes  # opened: msgpack, owned by the im layer
    disabled: bool
    version: int = 0


@dataclass(frozen=True)
class NewMessage:
    """A message to append; ``content`` is plaintext, sealed by the store."""

    conv_id: bytes
    members: tuple[bytes, ...]  # users whose inboxes receive it
    sender_id: bytes
    dedup: bytes
    created_ms: int
    content: bytes


@dataclass(frozen=True)
class Appended:
    seq: int
    created_ms: int
    duplicate: bool
    content: bytes  # for a duplicate, the content stored the first time
    inbox: dict[bytes, int]  # user_id -> inbox position (empty for a duplicate)
    sealed: bytes = b""  # the content as stored


@dataclass(frozen=True)
class InboxItem:
    """An inbox entry for a message stored (and numbered) by its conversation's owner."""

    user_id: bytes
    conv_id: bytes
    seq: int
    dedup: bytes
    created_ms: int
    sealed: bytes
    epoch: int = 0  # the ring epoch the message was numbered under


@dataclass(frozen=True)
class InboxPlaced:
    pos: int
    new: bool  # False: it was in the inbox already


@dataclass(frozen=True)
class Written:
    appended: list[Appended]
    placed: list[InboxPlaced]
    epoch: int = 0  # the ring epoch the new rows were stamped with


@dataclass
class Copies:
    """Rows copied between nodes, sealed as stored; msgpack-friendly tuples."""

    accounts: list[tuple[bytes, bytes, bytes, bool, int]] = field(default_factory=list)  # user, secret, profile, disabled, version
    conversations: list[tuple[bytes, list[bytes]]] = field(default_factory=list)  # conv, members
    # conv, seq, dedup, ms, content, epoch
    messages: list[tuple[bytes, int, bytes, int, bytes, int]] = field(default_factory=list)
    inbox: list[tuple[bytes, int, bytes, int, int]] = field(default_factory=list)  # user, pos, conv, seq, epoch
    terminals: list[tuple[bytes, bytes, int, int]] = field(default_factory=list)  # user, device, cursor, seen
    groups: list[tuple[bytes, bytes, int, list[bytes]]] = field(default_factory=list)  # group, sealed state, version, members
    records: list[tuple[bytes, str, bytes, int]] = field(default_factory=list)  # key, kind, sealed state, version
    reads: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # user, conv, seq read

    def __bool__(self) -> bool:
        return bool(
            self.accounts or self.conversations or self.messages or self.inbox or self.terminals or self.groups
            or self.records or self.reads
        )

    def pack(self) -> list[Any]:
        return [self.accounts, self.conversations, self.messages, self.inbox, self.terminals, self.groups,
                self.records, self.reads]

    @classmethod
    def unpack(cls, raw: Any) -> Copies:
        accounts, conversations, messages, inbox, terminals, groups, records, reads = raw
        copies = cls(
            [(bytes(u), bytes(x), bytes(p), bool(d), int(v)) for u, x, p, d, v in accounts],
            [(bytes(cv), [bytes(u) for u in ms]) for cv, ms in conversations],
            # A row from a node before schema 6 has no epoch: 0, older than any under the quorum protocol.
            [(bytes(r[0]), int(r[1]), bytes(r[2]), int(r[3]), bytes(r[4]), int(r[5]) if len(r) > 5 else 0)
             for r in messages],
            [(bytes(r[0]), int(r[1]), bytes(r[2]), int(r[3]), int(r[4]) if len(r) > 4 else 0) for r in inbox],
            [(bytes(u), bytes(d), int(cu), int(t)) for u, d, cu, t in terminals],
        )
        copies.groups = [(bytes(g), bytes(st), int(v), [bytes(u) for u in ms]) for g, st, v, ms in groups]
        copies.records = [(bytes(k), str(kind), bytes(st), int(v)) for k, kind, st, v in records]
        copies.reads = [(bytes(u), bytes(cv), int(q)) for u, cv, q in reads]
        return copies

    def merge(self, other: Copies) -> None:
        self.groups += other.groups
        self.records += other.records
        self.reads += other.reads
        self.accounts += other.accounts
        self.conversations += other.conversations
        self.messages += other.messages
        self.inbox += other.inbox
        self.terminals += other.terminals


@dataclass(frozen=True)
class StoredMessage:
    conv_id: bytes
    seq: int
    created_ms: int
    content: bytes  # opened; empty for a message that was recalled or burned

    @property
    def deleted(self) -> bool:
        return not self.content


#: What a stored message does to an earlier one of its conversation, given its
#: plaintext content: None (nothing), or (target seq, transform) where the
#: transform maps the target's content to its new content, or to None to
#: delete it. The messaging layer supplies it (``timpy.im.kinds``); the store
#: applies it wherever the row lands: on the conversation's owner, in a copy
#: beside an inbox, on a replica, on another backend.
EffectOf = Callable[[bytes], "tuple[int, Callable[[bytes], bytes | None]] | None"]


@dataclass(frozen=True)
class InboxEntry:
    pos: int
    message: StoredMessage


class Repository(RepairQueries):
    def __init__(self, engine: Engine, sealer: Sealer, effect_of: EffectOf | None = None) -> None:
        self.engine = engine
        self._sealer = sealer
        self._effect_of = effect_of

    # --- schema and key -------------------------------------------------

    def create_schema(self) -> None:
        """Create missing tables, check that the cluster key opens this data,
        and bring an older schema up to date (``migrations``)."""
        s.metadata.create_all(self.engine)
        ad = row_ad("timpy_meta", "canary")
        with self.engine.begin() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.name == "canary")).first()
            if row is None:
                conn.execute(insert(s.meta).values(name="canary", value=self._sealer.seal(_CANARY, ad)))
                self._set_meta(conn, "schema_version", str(s.SCHEMA_VERSION).encode())
                return
        try:
            self._sealer.open(row.value, ad)
        except StorageError:
            raise KeyMismatchError(
                "the cluster key does not open the data in this database: "
                "start with the key this data was created with (cluster.key or $TIMPY_CLUSTER_KEY)"
            ) from None
        self._migrate()

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            raw = self._get_meta(conn, "schema_version")
        return 1 if raw is None else int(raw.decode())

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > s.SCHEMA_VERSION:
            raise ConfigError(
                f"this database has schema version {version}, newer than this timpy knows "
                f"({s.SCHEMA_VERSION}): upgrade timpy on this node"
            )
        for target, what, step in steps_after(version):
            log.info("migrating the database to schema %d: %s", target, what)
            with self.engine.begin() as conn:
                step(conn)
                self._set_meta(conn, "schema_version", str(target).encode())

    def _get_meta(self, conn: Any, name: str) -> bytes | None:
        row = conn.execute(select(s.meta.c.value).where(s.meta.c.name == name)).first()
        return None if row is None else self._sealer.open(row.value, row_ad("timpy_meta", name))

    def _set_meta(self, conn: Any, name: str, value: bytes) -> None:
        sealed = self._sealer.seal(value, row_ad("timpy_meta", name))
        done = conn.execute(update(s.meta).where(s.meta.c.name == name).values(value=sealed)).rowcount
        if not done:
            conn.execute(insert(s.meta).values(name=name, value=sealed))

    def get_meta(self, name: str) -> bytes | None:
        """A sealed value of ``timpy_meta`` (the backend map), opened."""
        with self.engine.connect() as conn:
            return self._get_meta(conn, name)

    def set_meta(self, name: str, value: bytes) -> None:
        with self.engine.begin() as conn:
            self._set_meta(conn, name, value)

    def close(self) -> None:
        self.engine.dispose()

    # --- accounts -------------------------------------------------------

    def create_account(self, user_id: bytes, secret: bytes, profile: bytes) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(s.accounts).values(
                        user_id=user_id,
                        secret=self._sealer.seal(secret, row_ad("accounts", user_id, "secret")),
                        profile=self._sealer.seal(profile, row_ad("accounts", user_id, "profile")),
                        disabled=False,
                        inbox_head=0,
                    )
                )
        except IntegrityError:
            raise RequestError("that user name is taken", Code.USER_EXISTS) from None

    def get_account(self, user_id: bytes) -> AccountRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.accounts).where(s.accounts.c.user_id == user_id)).first()
        if row is None:
            return None
        return AccountRow(
            user_id=user_id,
            secret=self._sealer.open(row.secret, row_ad("accounts", user_id, "secret")),
            profile=self._sealer.open(row.profile, row_ad("accounts", user_id, "profile")),
            disabled=bool(row.disabled),
            version=int(row.version),
        )

    def update_account(
        self, user_id: bytes, secret: bytes | None = None, profile: bytes | None = None, disabled: bool | None = None
    ) -> int:
        """Change an account's secret, profile or disabled flag; returns its new
        version (0 = no such account)."""
        a = s.accounts
        values: dict[str, Any] = {"version": a.c.version + 1}
        if secret is not None:
            values["secret"] = self._sealer.seal(secret, row_ad("accounts", user_id, "secret"))
        if profile is not None:
            values["profile"] = self._sealer.seal(profile, row_ad("accounts", user_id, "profile"))
        if disabled is not None:
            values["disabled"] = bool(disabled)
        with self.engine.begin() as conn:
            if not conn.execute(update(a).where(a.c.user_id == user_id).values(**values)).rowcount:
                return 0
            return int(conn.execute(select(a.c.version).where(a.c.user_id == user_id)).scalar_one())

    def existing_accounts(self, user_ids: Sequence[bytes]) -> set[bytes]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.accounts.c.user_id).where(s.accounts.c.user_id.in_(list(user_ids)))
            )
            return {bytes(r.user_id) for r in rows}

    # --- groups ---------------------------------------------------------

    def get_group(self, group_id: bytes) -> tuple[bytes, int] | None:
        """A group's state (opened) and version."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.groups).where(s.groups.c.group_id == group_id)).first()
        if row is None:
            return None
        return self._sealer.open(row.state, row_ad("groups", group_id, "state")), int(row.version)

    def put_group(self, group_id: bytes, state: bytes, members: Sequence[bytes], expected: int) -> int:
        """Store a group's new state if its version is still ``expected`` (0: a
        new group), and make ``members`` the conversation's members. Returns
        the new version; raises if another write came first."""
        g, c = s.groups, s.conversations
        sealed = self._sealer.seal(state, row_ad("groups", group_id, "state"))
        try:
            with self.engine.begin() as conn:
                if expected == 0:
                    if conn.execute(select(g.c.version).where(g.c.group_id == group_id)).first() is not None:
                        raise RequestError("that group exists already", Code.BAD_REQUEST)
                    conn.execute(insert(g).values(group_id=group_id, state=sealed, version=1))
                    if conn.execute(select(c.c.conv_id).where(c.c.conv_id == group_id)).first() is None:
                        conn.execute(insert(c).values(conv_id=group_id, last_seq=0))
                else:
                    done = conn.execute(
                        update(g).where(and_(g.c.group_id == group_id, g.c.version == expected))
                        .values(state=sealed, version=expected + 1)
                    ).rowcount
                    if not done:
                        raise RequestError("the group changed at the same time; retry", Code.UNAVAILABLE)
                self._set_members(conn, group_id, members)
        except IntegrityError:
            raise RequestError("that group exists already", Code.BAD_REQUEST) from None
        return expected + 1

    @staticmethod
    def _set_members(conn: Any, conv_id: bytes, members: Sequence[bytes]) -> None:
        cm = s.conv_members
        have = {bytes(r.user_id) for r in conn.execute(select(cm.c.user_id).where(cm.c.conv_id == conv_id))}
        want = set(members)
        if have - want:
            conn.execute(cm.delete().where(and_(cm.c.conv_id == conv_id, cm.c.user_id.in_(list(have - want)))))
        if want - have:
            conn.execute(insert(cm), [dict(conv_id=conv_id, user_id=u) for u in sorted(want - have)])

    # --- messages -------------------------------------------------------

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
            return self._write_batch(batch, inbox_items, cursors, local_users, epoch)
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not _lost_a_lock_race(exc):
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
    ) -> Written:
        """One writer batch in one transaction: new messages (sequence numbers,
        rows, inbox entries of the members in ``local_users``, all when None),
        inbox entries for messages stored elsewhere (``inbox_items``), and
        terminal cursors (user id, device id) -> position to advance. New rows
        carry ``epoch``, the ring epoch of the owner's lease.

        Duplicates (same conversation and dedup index) return the stored
        message instead of a new one, also within the batch; an inbox item
        already in the inbox returns its position. Either the whole batch is
        stored or none of it is.
        """
        results: list[Appended] = []
        placed: list[InboxPlaced] = []
        m, c = s.messages, s.conversations
        with self.engine.begin() as conn:
            if cursors:
                self._advance_cursors(conn, cursors)
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
                    for k, v in _driver_in(conn, "SELECT conv_id, last_seq FROM conversations WHERE conv_id IN", conv_ids, lock=True)
                }
                existing_convs = set(last_seq)
                read_seq = dict(last_seq)  # as read: the compare-and-set below expects them unchanged
                # Rows that reached this node as another node's copies count too,
                # so a sequence number is never given twice.
                for k, top in _driver_in(
                    conn, "SELECT conv_id, MAX(seq) FROM messages WHERE conv_id IN", conv_ids, "GROUP BY conv_id"
                ):
                    key = bytes(k)
                    if key in last_seq and int(top) > last_seq[key]:
                        last_seq[key] = int(top)
            inbox_users = {
                u for item in batch for u in item.members if local_users is None or u in local_users
            } | {item.user_id for item in inbox_items}
            heads = {
                bytes(k): int(v)
                for k, v in _driver_in(
                    conn, "SELECT user_id, inbox_head FROM accounts WHERE user_id IN", list(inbox_users), lock=True
                )
            } if inbox_users else {}
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
                sealed = self._sealer.seal(item.content, row_ad("messages", item.conv_id, seq))
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
            if inbox_items:
                placed = self._place_inbox_items(
                    conn, inbox_items, heads, inbox_rows, touched_users, msg_rows, copy_rows, epoch
                )
            if redo:
                again = self._place_inbox_items(
                    conn, [it for _, it in redo], heads, inbox_rows, touched_users, msg_rows, copy_rows, epoch
                )
                for (index, it), where in zip(redo, again, strict=True):
                    if where.new:
                        results[index] = replace(results[index], inbox={**results[index].inbox, it.user_id: where.pos})
            if new_convs:
                conn.execute(insert(c), [dict(conv_id=k, last_seq=0) for k in new_convs])
                conn.execute(
                    insert(s.conv_members),
                    [dict(conv_id=k, user_id=u) for k, item in new_convs.items() for u in sorted(set(item.members))],
                )
            # The hot statements go to the driver as fixed SQL, many rows each.
            if msg_rows:
                _driver_many(conn, _INSERT_MESSAGE, [
                    (r["conv_id"], r["seq"], r["dedup"], r["created_ms"], r["content"], r["epoch"]) for r in msg_rows
                ])
            if copy_rows:
                # A move between backends may be copying the same rows right now.
                _insert_missing(conn, m, copy_rows)
            self._apply_effects(conn, [*msg_rows, *copy_rows], plain)
            if inbox_rows:
                _driver_many(conn, _INSERT_INBOX, [
                    (r["user_id"], r["pos"], r["conv_id"], r["seq"], r["epoch"]) for r in inbox_rows
                ])
            # Compare-and-set: the heads must still be what this batch read.
            changed = [(v, k, read_seq.get(k, 0)) for k, v in last_seq.items() if k in new_convs or k in existing_convs]
            if changed and _driver_many(conn, _SET_LAST_SEQ, changed) != len(changed):
                raise IntegrityError("conversations.last_seq", None, ValueError("moved by another writer"))
            if touched_users and _driver_many(
                conn, _SET_INBOX_HEAD, [(heads[u], u, read_heads[u]) for u in touched_users]
            ) != len(touched_users):
                raise IntegrityError("accounts.inbox_head", None, ValueError("moved by another writer"))
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
        another seq, from an older epoch than the item's, was never
        acknowledged (docs/consistency.md): the item's message replaces it;
        so does one from the same epoch (the conversation's owner numbers a
        slot once per epoch unless it undid the first write)."""
        i, m = s.inbox, s.messages
        users = list({it.user_id for it in items})
        convs = list({it.conv_id for it in items})
        already = {
            (bytes(r.user_id), bytes(r.conv_id), int(r.seq)): int(r.pos)
            for r in conn.execute(
                select(i.c.user_id, i.c.conv_id, i.c.seq, i.c.pos).where(
                    and_(i.c.user_id.in_(users), i.c.conv_id.in_(convs), i.c.seq.in_(list({it.seq for it in items})))
                )
            )
        }
        held = {  # (conv, seq) -> (dedup, epoch) of the rows here that the items may meet
            (bytes(r.conv_id), int(r.seq)): (bytes(r.dedup), int(r.epoch))
            for r in conn.execute(
                select(m.c.conv_id, m.c.seq, m.c.dedup, m.c.epoch).where(and_(m.c.conv_id.in_(convs), or_(
                    m.c.seq.in_(list({it.seq for it in items})), m.c.dedup.in_(list({it.dedup for it in items})),
                )))
            )
        }
        wanted = {(it.conv_id, it.seq, it.dedup) for it in items}
        have_msgs = {(c, q) for (c, q), (d, _e) in held.items() if (c, q, d) in wanted}
        have_msgs |= {(r["conv_id"], r["seq"]) for r in (*msg_rows, *copy_rows)}
        placed: list[InboxPlaced] = []
        for it in items:
            key = (it.user_id, it.conv_id, it.seq)
            item_epoch = it.epoch or epoch
            if (it.conv_id, it.seq) not in have_msgs:
                stale = [
                    (c, q) for (c, q), (d, e) in held.items()
                    if c == it.conv_id and ((q == it.seq) != (d == it.dedup)) and e <= item_epoch
                ]
                for c, q in stale:
                    conn.execute(m.delete().where(and_(m.c.conv_id == c, m.c.seq == q)))
                    del held[(c, q)]
                if not any(c == it.conv_id and (q == it.seq or d == it.dedup) for (c, q), (d, _e) in held.items()):
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

    # --- copies between nodes (replication, catch-up, anti-entropy) -------
    #
    # Rows travel sealed, exactly as stored: every node holds the same key and
    # the associated data names the row, so a copy opens wherever it lands.

    def undo_writes(
        self, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]]
    ) -> int:
        """Remove the rows of a write that never reached its write quorum (so
        was never acknowledged): exactly these (conversation, seq, dedup) and
        (user, position, conversation, seq), and move the counters back to the
        highest row left, so the next owner's numbering leaves no gap. Returns
        the number of rows removed."""
        m, c, a, i = s.messages, s.conversations, s.accounts, s.inbox
        removed = 0
        with self.engine.begin() as conn:
            for conv, seq, dedup in messages:
                removed += conn.execute(
                    delete(m).where(and_(m.c.conv_id == conv, m.c.seq == seq, m.c.dedup == dedup))
                ).rowcount
            for user, pos, conv, seq in inbox:
                removed += conn.execute(
                    delete(i).where(and_(i.c.user_id == user, i.c.pos == pos, i.c.conv_id == conv, i.c.seq == seq))
                ).rowcount
            for conv in {x[0] for x in messages}:
                top = conn.execute(select(func.max(m.c.seq)).where(m.c.conv_id == conv)).scalar() or 0
                conn.execute(update(c).where(and_(c.c.conv_id == conv, c.c.last_seq > top)).values(last_seq=top))
            for user in {x[0] for x in inbox}:
                top = conn.execute(select(func.max(i.c.pos)).where(i.c.user_id == user)).scalar() or 0
                conn.execute(update(a).where(and_(a.c.user_id == user, a.c.inbox_head > top)).values(inbox_head=top))
        return removed

    def apply_copies(self, bundle: Copies, owner_write: bool = False) -> int:
        """Store rows copied from another node, keeping what is here already
        unless a copy's row wins its slot (``repair.merge_message_rows``:
        a higher epoch, or ``owner_write``, an owner's new write, at an
        equal one); counters only move forward. Returns the number of rows added."""
        added = 0
        m, c, a, i, t = s.messages, s.conversations, s.accounts, s.inbox, s.terminals
        with self.engine.begin() as conn:
            if bundle.accounts:
                have = {
                    bytes(r.user_id): int(r.version)
                    for r in conn.execute(
                        select(a.c.user_id, a.c.version).where(a.c.user_id.in_([r[0] for r in bundle.accounts]))
                    )
                }
                rows = [
                    dict(user_id=u, secret=sec, profile=prof, disabled=bool(dis), inbox_head=0, version=ver)
                    for u, sec, prof, dis, ver in bundle.accounts
                    if u not in have
                ]
                if rows:
                    _insert_missing(conn, a, rows)
                    added += len(rows)
                for u, sec, prof, dis, ver in bundle.accounts:
                    if u in have and ver > have[u]:  # a newer account: the copy wins
                        conn.execute(
                            update(a).where(and_(a.c.user_id == u, a.c.version < ver))
                            .values(secret=sec, profile=prof, disabled=bool(dis), version=ver)
                        )
                        added += 1
            for group_id, sealed, version, members in bundle.groups:
                row = conn.execute(select(s.groups.c.version).where(s.groups.c.group_id == group_id)).first()
                if row is None:
                    _insert_missing(conn, s.groups, [dict(group_id=group_id, state=sealed, version=version)])
                elif int(row.version) < version:
                    conn.execute(update(s.groups).where(s.groups.c.group_id == group_id)
                                 .values(state=sealed, version=version))
                else:
                    continue
                if conn.execute(select(c.c.conv_id).where(c.c.conv_id == group_id)).first() is None:
                    _insert_missing(conn, c, [dict(conv_id=group_id, last_seq=0)])
                self._set_members(conn, group_id, members)
                added += 1
            if bundle.messages:
                rows = merge_message_rows(conn, bundle.messages, owner_write)  # a slot's higher epoch wins
                if rows:
                    _insert_missing(conn, m, rows)
                    added += len(rows)
                    self._apply_effects(conn, rows, {})
                tops: dict[bytes, int] = {}
                for conv, seq, *_ in bundle.messages:
                    tops[conv] = max(tops.get(conv, 0), seq)
                conn.execute(
                    update(c)
                    .where(and_(c.c.conv_id == bindparam("k"), c.c.last_seq < bindparam("v")))
                    .values(last_seq=bindparam("v")),
                    [dict(k=k, v=v) for k, v in tops.items()],
                )
            for conv, members in bundle.conversations:
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
                    _insert_missing(conn, s.conv_members, missing)
            if bundle.inbox:
                rows = merge_inbox_rows(conn, bundle.inbox, owner_write)
                tops: dict[bytes, int] = {}
                for user, pos, *_ in bundle.inbox:
                    tops[user] = max(tops.get(user, 0), pos)
                if rows:
                    _insert_missing(conn, i, rows)
                    added += len(rows)
                conn.execute(
                    update(a)
                    .where(and_(a.c.user_id == bindparam("k"), a.c.inbox_head < bindparam("v")))
                    .values(inbox_head=bindparam("v")),
                    [dict(k=u, v=v) for u, v in tops.items()],
                )
            for user, device, cursor, seen in bundle.terminals:
                row = conn.execute(
                    select(t.c.cursor).where(and_(t.c.user_id == user, t.c.device_id == device))
                ).first()
                if row is None:
                    conn.execute(insert(t).values(user_id=user, device_id=device, cursor=cursor, last_seen_ms=seen))
                    added += 1
                elif int(row.cursor) < cursor:
                    conn.execute(
                        update(t).where(and_(t.c.user_id == user, t.c.device_id == device)).values(cursor=cursor)
                    )
            r = s.records
            for key, kind, sealed, version in bundle.records:
                have = conn.execute(select(r.c.version).where(and_(r.c.key_id == key, r.c.kind == kind))).first()
                if have is None:
                    _insert_missing(conn, r, [dict(key_id=key, kind=kind, state=sealed, version=version)])
                    added += 1
                elif int(have.version) < version:
                    conn.execute(update(r).where(and_(r.c.key_id == key, r.c.kind == kind, r.c.version < version))
                                 .values(state=sealed, version=version))
                    added += 1
            if bundle.reads:
                self._advance_reads(conn, {(u, cv): q for u, cv, q in bundle.reads})
        return added

    def conversation_copies(self, conv_id: bytes, after_seq: int, limit: int) -> Copies:
        """A conversation's members and its messages after ``after_seq`` (``limit`` at most)."""
        m = s.messages
        with self.engine.connect() as conn:
            members = [
                bytes(r.user_id)
                for r in conn.execute(select(s.conv_members.c.user_id).where(s.conv_members.c.conv_id == conv_id))
            ]
            rows = conn.execute(
                select(m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                .where(and_(m.c.conv_id == conv_id, m.c.seq > after_seq))
                .order_by(m.c.seq.asc())
                .limit(limit)
            )
            messages = [
                (conv_id, int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content), int(r.epoch)) for r in rows
            ]
            group = conn.execute(select(s.groups).where(s.groups.c.group_id == conv_id)).first()
            records = self._records_of(conn, [conv_id])
        if group is not None:  # a group's members travel with its state (a copy may be older: no re-adding)
            return Copies(
                conversations=[(conv_id, [])], messages=messages,
                groups=[(conv_id, bytes(group.state), int(group.version), members)], records=records,
            )
        return Copies(conversations=[(conv_id, members)] if members else [], messages=messages, records=records)

    @staticmethod
    def _records_of(conn: Any, keys: list[bytes]) -> list[tuple[bytes, str, bytes, int]]:
        r = s.records
        return [
            (bytes(row.key_id), str(row.kind), bytes(row.state), int(row.version))
            for row in conn.execute(select(r).where(r.c.key_id.in_(keys)))
        ]

    def user_copies(self, user_id: bytes, after_pos: int, limit: int) -> Copies:
        """A user's account, terminals, and inbox after ``after_pos`` with its messages."""
        a, i, m, t = s.accounts, s.inbox, s.messages, s.terminals
        with self.engine.connect() as conn:
            acc = conn.execute(select(a).where(a.c.user_id == user_id)).first()
            if acc is None:
                return Copies()
            inbox = list(
                conn.execute(
                    select(i.c.pos, i.c.conv_id, i.c.seq, i.c.epoch)
                    .where(and_(i.c.user_id == user_id, i.c.pos > after_pos))
                    .order_by(i.c.pos.asc())
                    .limit(limit)
                )
            )
            messages = []
            if inbox:
                rows = conn.execute(
                    select(m.c.conv_id, m.c.seq, m.c.dedup, m.c.created_ms, m.c.content, m.c.epoch)
                    .select_from(i.join(m, and_(m.c.conv_id == i.c.conv_id, m.c.seq == i.c.seq)))
                    .where(and_(i.c.user_id == user_id, i.c.pos > after_pos, i.c.pos <= inbox[-1].pos))
                )
                messages = [
                    (bytes(r.conv_id), int(r.seq), bytes(r.dedup), int(r.created_ms), bytes(r.content), int(r.epoch))
                    for r in rows
                ]
            terms = [
                (user_id, bytes(r.device_id), int(r.cursor), int(r.last_seen_ms))
                for r in conn.execute(select(t).where(t.c.user_id == user_id))
            ]
            records = self._records_of(conn, [user_id])
            rm = s.read_marks
            reads = [
                (user_id, bytes(r.conv_id), int(r.seq))
                for r in conn.execute(select(rm.c.conv_id, rm.c.seq).where(rm.c.user_id == user_id))
            ]
        return Copies(
            accounts=[(user_id, bytes(acc.secret), bytes(acc.profile), bool(acc.disabled), int(acc.version))],
            messages=messages,
            inbox=[(user_id, int(r.pos), bytes(r.conv_id), int(r.seq), int(r.epoch)) for r in inbox],
            terminals=terms,
            records=records,
            reads=reads,
        )

    def conversation_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(conv id, last seq) of the conversations here, in id order, after ``after``."""
        c = s.conversations
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.c.conv_id, c.c.last_seq).where(c.c.conv_id > after).order_by(c.c.conv_id.asc()).limit(limit)
            )
            return [(bytes(r.conv_id), int(r.last_seq)) for r in rows]

    def user_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(user id, inbox head) of the accounts here, in id order, after ``after``."""
        a = s.accounts
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(a.c.user_id, a.c.inbox_head).where(a.c.user_id > after).order_by(a.c.user_id.asc()).limit(limit)
            )
            return [(bytes(r.user_id), int(r.inbox_head)) for r in rows]

    def behind(self, kind: str, digest: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """Of a peer's digest, the keys where this node has less: (key, what it has; -1 = nothing)."""
        if not digest:
            return []
        with self.engine.connect() as conn:
            keys = [k for k, _ in digest]
            if kind == "conv":
                c = s.conversations
                mine = {
                    bytes(r.conv_id): int(r.last_seq)
                    for r in conn.execute(select(c.c.conv_id, c.c.last_seq).where(c.c.conv_id.in_(keys)))
                }
            else:
                a = s.accounts
                mine = {
                    bytes(r.user_id): int(r.inbox_head)
                    for r in conn.execute(select(a.c.user_id, a.c.inbox_head).where(a.c.user_id.in_(keys)))
                }
        return [(k, mine.get(k, -1)) for k, v in digest if mine.get(k, -1) < v]

    # --- moving keys between backends (shared-backend mode) ----------------

    def key_count(self) -> tuple[int, int]:
        """(conversations, accounts) stored here."""
        with self.engine.connect() as conn:
            convs = conn.execute(select(func.count()).select_from(s.conversations)).scalar_one()
            users = conn.execute(select(func.count()).select_from(s.accounts)).scalar_one()
        return int(convs), int(users)

    def key_stats(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, tuple[int, ...]]:
        """What a backend holds of each key, to verify a copy: for a
        conversation (last seq, messages, members, group version); for a user (inbox head,
        inbox entries, terminals, account version). Keys it does not hold are absent."""
        out: dict[bytes, tuple[int, ...]] = {}
        if not keys:
            return out
        keys = list(keys)
        with self.engine.connect() as conn:
            if kind == "conv":
                c, m, cm = s.conversations, s.messages, s.conv_members
                heads = {bytes(r[0]): int(r[1]) for r in conn.execute(select(c.c.conv_id, c.c.last_seq).where(c.c.conv_id.in_(keys)))}
                counts = dict(self._counts(conn, m.c.conv_id, keys))
                members = dict(self._counts(conn, cm.c.conv_id, keys))
                g = s.groups
                versions = {bytes(r[0]): int(r[1]) for r in conn.execute(select(g.c.group_id, g.c.version).where(g.c.group_id.in_(keys)))}
                recs = self._record_versions(conn, keys)
                for k, head in heads.items():
                    out[k] = (head, counts.get(k, 0), members.get(k, 0), versions.get(k, 0), recs.get(k, 0))
            else:
                a, i, t = s.accounts, s.inbox, s.terminals
                heads = {
                    bytes(r[0]): (int(r[1]), int(r[2]))
                    for r in conn.execute(select(a.c.user_id, a.c.inbox_head, a.c.version).where(a.c.user_id.in_(keys)))
                }
                counts = dict(self._counts(conn, i.c.user_id, keys))
                terms = dict(self._counts(conn, t.c.user_id, keys))
                recs = self._record_versions(conn, keys)
                for k, (head, version) in heads.items():
                    out[k] = (head, counts.get(k, 0), terms.get(k, 0), version, recs.get(k, 0))
        return out

    @staticmethod
    def _record_versions(conn: Any, keys: list[bytes]) -> dict[bytes, int]:
        r = s.records
        rows = conn.execute(select(r.c.key_id, func.sum(r.c.version)).where(r.c.key_id.in_(keys)).group_by(r.c.key_id))
        return {bytes(row[0]): int(row[1]) for row in rows}

    @staticmethod
    def _counts(conn: Any, column: Any, keys: list[bytes]) -> list[tuple[bytes, int]]:
        rows = conn.execute(select(column, func.count()).where(column.in_(keys)).group_by(column))
        return [(bytes(r[0]), int(r[1])) for r in rows]

    def forget(self, conv_ids: Sequence[bytes], user_ids: Sequence[bytes], homed: Callable[[bytes], bool]) -> int:
        """Delete the copies of keys that moved to another backend, in one
        transaction: the users' accounts, terminals and inboxes, the
        conversations and their members, and every message row that neither
        a conversation homed here (``homed``) nor a remaining inbox entry
        needs. Returns the number of rows deleted."""
        a, c, cm, i, m, t = s.accounts, s.conversations, s.conv_members, s.inbox, s.messages, s.terminals
        deleted = 0
        users, convs = list(user_ids), list(conv_ids)
        with self.engine.begin() as conn:
            candidates = set(convs)
            if users:
                candidates |= {
                    bytes(r[0]) for r in conn.execute(select(i.c.conv_id).where(i.c.user_id.in_(users)).distinct())
                }
                for table in (i, t, a, s.read_marks):
                    deleted += conn.execute(table.delete().where(table.c.user_id.in_(users))).rowcount
                deleted += conn.execute(s.records.delete().where(s.records.c.key_id.in_(users))).rowcount
            if convs:
                for table in (cm, c):
                    deleted += conn.execute(table.delete().where(table.c.conv_id.in_(convs))).rowcount
                deleted += conn.execute(s.groups.delete().where(s.groups.c.group_id.in_(convs))).rowcount
                deleted += conn.execute(s.records.delete().where(s.records.c.key_id.in_(convs))).rowcount
            stale = [k for k in candidates if k in set(convs) or not homed(k)]
            referenced = select(i.c.pos).where(and_(i.c.conv_id == m.c.conv_id, i.c.seq == m.c.seq)).exists()
            for start in range(0, len(stale), 500):
                chunk = stale[start : start + 500]
                deleted += conn.execute(m.delete().where(and_(m.c.conv_id.in_(chunk), ~referenced))).rowcount
        return deleted

    def conversation_head(self, conv_id: bytes) -> int:
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(s.messages.c.seq)).where(s.messages.c.conv_id == conv_id)).scalar()
            return int(top or 0)

    def inbox_head(self, user_id: bytes) -> int:
        """Where this node's copy of the user's inbox ends; -1 without the account."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.accounts.c.inbox_head).where(s.accounts.c.user_id == user_id)).first()
            return -1 if row is None else int(row.inbox_head)

    def open_sealed_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        return self._open_message(conv_id, seq, sealed)

    def _open_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        if not sealed:
            return b""  # recalled or burned: nothing is left of it
        return self._sealer.open(sealed, row_ad("messages", conv_id, seq))

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

    def read_history(
        self, conv_id: bytes, before_seq: int, after_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """A page of a conversation, oldest first, and whether more lie beyond it.

        With ``after_seq`` (0 = from the start) the oldest after it; otherwise
        the newest before ``before_seq`` (0 = the latest).
        """
        m = s.messages
        q = select(m.c.seq, m.c.created_ms, m.c.content).where(m.c.conv_id == conv_id)
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
            StoredMessage(conv_id, r.seq, r.created_ms, self._open_message(conv_id, r.seq, r.content))
            for r in rows
        ], more

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

    # --- what a message does to an earlier one (recall, burn, edit) --------

    def _apply_effects(
        self, conn: Any, rows: Sequence[dict[str, Any]], plain: dict[tuple[bytes, int], bytes]
    ) -> None:
        """Apply the effects of message rows just inserted (in order); ``plain``
        has the contents of rows that are not sealed yet at hand."""
        if self._effect_of is None:
            return
        m = s.messages
        for row in sorted(rows, key=lambda r: (r["conv_id"], r["seq"])):
            conv, seq = row["conv_id"], row["seq"]
            content = plain.get((conv, seq))
            if content is None:
                content = self._open_message(conv, seq, row["content"])
            if not content:
                continue
            effect = self._effect_of(content)
            if effect is None:
                continue
            target, transform = effect
            if not 0 < target < seq:
                continue
            old = conn.execute(select(m.c.content).where(and_(m.c.conv_id == conv, m.c.seq == target))).first()
            if old is None or not old.content:
                continue  # not here (an inbox copy of a message this user never had), or gone already
            changed = transform(self._open_message(conv, target, bytes(old.content)))
            sealed = b"" if changed is None else self._sealer.seal(changed, row_ad("messages", conv, target))
            conn.execute(update(m).where(and_(m.c.conv_id == conv, m.c.seq == target)).values(content=sealed))

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

    # --- records: small sealed values per key, with versions ---------------

    def get_record(self, key_id: bytes, kind: str) -> tuple[bytes, int] | None:
        """A record's value (opened) and version."""
        r = s.records
        with self.engine.connect() as conn:
            row = conn.execute(select(r.c.state, r.c.version).where(and_(r.c.key_id == key_id, r.c.kind == kind))).first()
        if row is None:
            return None
        return self._sealer.open(bytes(row.state), row_ad("records", key_id, kind)), int(row.version)

    def get_records(self, key_ids: Sequence[bytes], kind: str) -> dict[bytes, bytes]:
        """The values (opened) of one kind of record for many keys; absent keys are left out."""
        r = s.records
        keys = list(key_ids)
        if not keys:
            return {}
        with self.engine.connect() as conn:
            rows = list(conn.execute(select(r.c.key_id, r.c.state).where(and_(r.c.key_id.in_(keys), r.c.kind == kind))))
        return {bytes(row.key_id): self._sealer.open(bytes(row.state), row_ad("records", bytes(row.key_id), kind))
                for row in rows}

    def put_record(self, key_id: bytes, kind: str, state: bytes, expected: int) -> int:
        """Store a record's new value if its version is still ``expected`` (0:
        none yet); returns the new version, or raises if another write came first."""
        r = s.records
        sealed = self._sealer.seal(state, row_ad("records", key_id, kind))
        try:
            with self.engine.begin() as conn:
                if expected == 0:
                    conn.execute(insert(r).values(key_id=key_id, kind=kind, state=sealed, version=1))
                else:
                    done = conn.execute(
                        update(r).where(and_(r.c.key_id == key_id, r.c.kind == kind, r.c.version == expected))
                        .values(state=sealed, version=expected + 1)
                    ).rowcount
                    if not done:
                        raise RequestError("it changed at the same time; retry", Code.UNAVAILABLE)
        except IntegrityError:
            raise RequestError("it changed at the same time; retry", Code.UNAVAILABLE) from None
        return expected + 1

    def record_copies(self, key_id: bytes, kind: str) -> Copies:
        with self.engine.connect() as conn:
            return Copies(records=[rec for rec in self._records_of(conn, [key_id]) if rec[1] == kind])

    # --- read marks and unread counts ------------------------------------

    @staticmethod
    def _advance_reads(conn: Any, marks: dict[tuple[bytes, bytes], int]) -> None:
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
            _insert_missing(conn, rm, fresh)
        later = [dict(u=u, c=cv, q=q) for (u, cv), q in marks.items() if (u, cv) in have and have[(u, cv)] < q]
        if later:
            conn.execute(
                update(rm).where(and_(rm.c.user_id == bindparam("u"), rm.c.conv_id == bindparam("c"),
                                      rm.c.seq < bindparam("q"))).values(seq=bindparam("q")),
                later,
            )

    def mark_read(self, user_id: bytes, conv_id: bytes, seq: int) -> int:
        """Move the user's read mark of a conversation forward to ``seq``; returns
        the mark before (marks never move back)."""
        rm = s.read_marks
        with self.engine.begin() as conn:
            before = conn.execute(
                select(rm.c.seq).where(and_(rm.c.user_id == user_id, rm.c.conv_id == conv_id))
            ).scalar()
            self._advance_reads(conn, {(user_id, conv_id): seq})
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

    # --- terminals ------------------------------------------------------

    def open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        """The terminal's delivery cursor, creating the terminal if it is new.

        A new terminal starts at the lowest cursor of the account's other
        terminals, so it receives what some terminal has not yet received.
        """
        try:
            return self._open_terminal(user_id, device_id, now_ms)
        except IntegrityError:  # the same terminal opened at the same moment elsewhere: it exists now
            return self._open_terminal(user_id, device_id, now_ms)

    def _open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        t = s.terminals
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.cursor).where(and_(t.c.user_id == user_id, t.c.device_id == device_id))
            ).first()
            if row is not None:
                conn.execute(
                    update(t)
                    .where(and_(t.c.user_id == user_id, t.c.device_id == device_id))
                    .values(last_seen_ms=now_ms)
                )
                return int(row.cursor)
            start = conn.execute(select(func.min(t.c.cursor)).where(t.c.user_id == user_id)).scalar()
            start = int(start or 0)
            conn.execute(insert(t).values(user_id=user_id, device_id=device_id, cursor=start, last_seen_ms=now_ms))
            return start

    @staticmethod
    def _advance_cursors(conn: Any, cursors: dict[tuple[bytes, bytes], int]) -> None:
        t = s.terminals
        conn.execute(
            update(t)
            .where(and_(t.c.user_id == bindparam("u"), t.c.device_id == bindparam("d"), t.c.cursor < bindparam("p")))
            .values(cursor=bindparam("p")),
            [dict(u=u, d=d, p=p) for (u, d), p in cursors.items()],
        )

    def count_terminals(self, user_id: bytes) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.terminals).where(s.terminals.c.user_id == user_id)).scalar_one())

    # --- token revocation ----------------------------------------------

    def revoke_token(self, token_id: bytes, expires_ms: int) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(s.revoked_tokens).values(token_id=token_id, expires_ms=expires_ms))
        except IntegrityError:
            pass  # revoked already

    def live_revocations(self, now_ms: int) -> dict[bytes, int]:
        with self.engine.begin() as conn:
            conn.execute(s.revoked_tokens.delete().where(s.revoked_tokens.c.expires_ms <= now_ms))
            rows = conn.execute(select(s.revoked_tokens))
            return {bytes(r.token_id): r.expires_ms for r in rows}


_INSERT_MESSAGE = "INSERT INTO messages (conv_id, seq, dedup, created_ms, content, epoch) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_INBOX = "INSERT INTO inbox (user_id, pos, conv_id, seq, epoch) VALUES (?, ?, ?, ?, ?)"
_SET_LAST_SEQ = "UPDATE conversations SET last_seq = ? WHERE conv_id = ? AND last_seq = ?"
_SET_INBOX_HEAD = "UPDATE accounts SET inbox_head = ? WHERE user_id = ? AND inbox_head = ?"


def _driver_sql(conn: Any, sql: str) -> str:
    """Fixed SQL written with ``?`` placeholders, in the driver's own style."""
    return sql if conn.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def _driver_many(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """One statement, many rows, straight through the DB-API (``executemany``):
    none of SQLAlchemy's per-row compiling and binding on the hot path.
    Returns the rows it changed."""
    return int(conn.exec_driver_sql(_driver_sql(conn, sql), rows).rowcount)


def _driver_in(conn: Any, head: str, keys: list[Any], tail: str = "", lock: bool = False) -> list[tuple[Any, ...]]:
    """``head (?, ?, ...) tail`` for ``keys``, through the DB-API; ``lock``
    takes the rows' write locks (FOR UPDATE) where the backend has them."""
    sql = f"{head} ({', '.join('?' * len(keys))}) {tail}"
    if lock and conn.dialect.name != "sqlite":
        sql += " FOR UPDATE"
    return list(conn.exec_driver_sql(_driver_sql(conn, sql), tuple(keys)))


_DEDUP_CHUNK = 32  # (conversation, dedup) pairs per lookup statement; one fixed text, so it is compiled once
_DEDUP_LOOKUP = text(
    "SELECT conv_id, dedup, seq, created_ms, content FROM messages WHERE "
    + " OR ".join(f"(conv_id = :c{k} AND dedup = :d{k})" for k in range(_DEDUP_CHUNK))
)


def _stored_by_dedup(conn: Any, keys: set[tuple[bytes, bytes]]) -> dict[tuple[bytes, bytes], Any]:
    """The stored messages among ``keys`` (conversation id, dedup index).

    Each pair is an equality on both columns of the UNIQUE (conv_id, dedup)
    index, so every dialect finds them through it: a lookup costs the same
    whatever the table holds. (``dedup IN (...)`` alone cannot use that index
    and scanned the messages table on every batch.)"""
    found: dict[tuple[bytes, bytes], Any] = {}
    pairs = list(keys)
    for start in range(0, len(pairs), _DEDUP_CHUNK):
        chunk = pairs[start : start + _DEDUP_CHUNK]
        chunk += [chunk[-1]] * (_DEDUP_CHUNK - len(chunk))  # pad: the statement's text never changes
        params: dict[str, bytes] = {}
        for k, (conv_id, dedup) in enumerate(chunk):
            params[f"c{k}"], params[f"d{k}"] = conv_id, dedup
        for r in conn.execute(_DEDUP_LOOKUP, params):
            found[(bytes(r.conv_id), bytes(r.dedup))] = r
    return found


def _lost_a_lock_race(exc: OperationalError) -> bool:
    """A deadlock or serialization failure: the database rolled this
    transaction back because another one wanted the same rows."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL (psycopg)
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in (1205, 1213)  # MySQL/MariaDB: lock wait timeout, deadlock


def _insert_missing(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert rows, skipping any whose key is there already (copies that race
    with another copy of the same rows)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(table).on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        stmt = insert(table).prefix_with("IGNORE")
    elif dialect == "sqlite":
        stmt = insert(table).prefix_with("OR IGNORE")
    else:  # pragma: no cover - the three dialects above are the supported ones
        stmt = insert(table)
    conn.execute(stmt, rows)


class Store:
    """The repository behind a capacity limiter: storage work runs in worker
    threads and never blocks the trio loop."""

    def __init__(self, repo: Any, threads: int) -> None:
        self.repo = repo
        self._limiter = trio.CapacityLimiter(threads)
        self.observe: Callable[[str, float], None] | None = None  # (operation, seconds), for metrics

    def queued(self) -> int:
        """Storage calls waiting for a worker thread."""
        return self._limiter.statistics().tasks_waiting

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await to_worker(fn, *args, limiter=self._limiter)
        except (OperationalError, SQLAlchemyError) as exc:
            # Only the message: a driver's text may quote parameters.
            raise StorageError(
                f"storage failed ({type(exc).__name__}); the operation had no effect, retry later"
            ) from exc
        finally:
            if self.observe is not None:
                self.observe(getattr(fn, "__name__", "call"), time.perf_counter() - started)

    def close(self) -> None:
        self.repo.close()
