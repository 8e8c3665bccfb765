"""The repository: every read and write timpy makes, as synchronous
transactions meant to run in a worker thread (see ``Store``).

Payload plaintexts come in and go out; sealing and opening happen here, with
associated data that binds each sealed value to its table, key and sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from sqlalchemy import Engine, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from timpy.crypto.seal import Sealer, row_ad
from timpy.errors import Code, KeyMismatchError, RequestError, StorageError
from timpy.store import schema as s

T = TypeVar("T")
_CANARY = b"timpy cluster key check"


@dataclass(frozen=True)
class AccountRow:
    user_id: bytes
    secret: bytes  # opened: the argon2id hash
    profile: bytes  # opened: msgpack, owned by the im layer
    disabled: bool


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


@dataclass(frozen=True)
class StoredMessage:
    conv_id: bytes
    seq: int
    created_ms: int
    content: bytes


@dataclass(frozen=True)
class InboxEntry:
    pos: int
    message: StoredMessage


class Repository:
    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        self.engine = engine
        self._sealer = sealer

    # --- schema and key -------------------------------------------------

    def create_schema(self) -> None:
        """Create missing tables and check that the cluster key opens this data."""
        s.metadata.create_all(self.engine)
        ad = row_ad("timpy_meta", "canary")
        with self.engine.begin() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.name == "canary")).first()
            if row is None:
                conn.execute(insert(s.meta).values(name="canary", value=self._sealer.seal(_CANARY, ad)))
                conn.execute(
                    insert(s.meta).values(
                        name="schema_version",
                        value=self._sealer.seal(str(s.SCHEMA_VERSION).encode(), row_ad("timpy_meta", "schema_version")),
                    )
                )
                return
        try:
            self._sealer.open(row.value, ad)
        except StorageError:
            raise KeyMismatchError(
                "the cluster key does not open the data in this database: "
                "start with the key this data was created with (cluster.key or $TIMPY_CLUSTER_KEY)"
            ) from None

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
        )

    def existing_accounts(self, user_ids: Sequence[bytes]) -> set[bytes]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.accounts.c.user_id).where(s.accounts.c.user_id.in_(list(user_ids)))
            )
            return {bytes(r.user_id) for r in rows}

    # --- messages -------------------------------------------------------

    def append_messages(
        self, batch: Sequence[NewMessage], cursors: dict[tuple[bytes, bytes], int] | None = None
    ) -> list[Appended]:
        """Append a batch in one transaction: sequence numbers, rows, inbox entries,
        and any terminal cursors (user id, device id) -> position to advance.

        Duplicates (same conversation and dedup index) return the stored
        message instead of a new one, also within the batch. Either the whole
        batch is stored or none of it is.
        """
        results: list[Appended] = []
        m, c, a = s.messages, s.conversations, s.accounts
        with self.engine.begin() as conn:
            if cursors:
                self._advance_cursors(conn, cursors)
            if not batch:
                return results
            # One statement per kind of lookup for the whole batch.
            dedups = list({item.dedup for item in batch})
            stored = {
                (bytes(r.conv_id), bytes(r.dedup)): r
                for r in conn.execute(
                    select(m.c.conv_id, m.c.dedup, m.c.seq, m.c.created_ms, m.c.content).where(m.c.dedup.in_(dedups))
                )
            }
            conv_ids = list({item.conv_id for item in batch})
            last_seq = {
                bytes(r.conv_id): int(r.last_seq)
                for r in conn.execute(select(c.c.conv_id, c.c.last_seq).where(c.c.conv_id.in_(conv_ids)).with_for_update())
            }
            existing_convs = set(last_seq)
            user_ids = list({u for item in batch for u in item.members})
            heads = {
                bytes(r.user_id): int(r.inbox_head)
                for r in conn.execute(select(a.c.user_id, a.c.inbox_head).where(a.c.user_id.in_(user_ids)).with_for_update())
            }
            missing = set(user_ids) - set(heads)
            if missing:
                raise RequestError("no such user", Code.NO_SUCH_USER)
            seen: dict[tuple[bytes, bytes], Appended] = {}
            new_convs: dict[bytes, NewMessage] = {}
            msg_rows: list[dict[str, Any]] = []
            inbox_rows: list[dict[str, Any]] = []
            touched_users: set[bytes] = set()
            for item in batch:
                key = (item.conv_id, item.dedup)
                if key in seen:
                    first = seen[key]
                    results.append(Appended(first.seq, first.created_ms, True, first.content, {}))
                    continue
                old = stored.get(key)
                if old is not None:
                    content = self._open_message(item.conv_id, old.seq, old.content)
                    dup = Appended(old.seq, old.created_ms, True, content, {})
                    seen[key] = dup
                    results.append(dup)
                    continue
                if item.conv_id not in last_seq:
                    new_convs[item.conv_id] = item
                    last_seq[item.conv_id] = 0
                seq = last_seq[item.conv_id] + 1
                last_seq[item.conv_id] = seq
                msg_rows.append(
                    dict(
                        conv_id=item.conv_id,
                        seq=seq,
                        dedup=item.dedup,
                        created_ms=item.created_ms,
                        content=self._sealer.seal(item.content, row_ad("messages", item.conv_id, seq)),
                    )
                )
                positions: dict[bytes, int] = {}
                for user_id in item.members:
                    heads[user_id] += 1
                    touched_users.add(user_id)
                    positions[user_id] = heads[user_id]
                    inbox_rows.append(dict(user_id=user_id, pos=heads[user_id], conv_id=item.conv_id, seq=seq))
                appended = Appended(seq, item.created_ms, False, item.content, positions)
                seen[key] = appended
                results.append(appended)
            if not msg_rows:
                return results
            if new_convs:
                conn.execute(insert(c), [dict(conv_id=k, last_seq=0) for k in new_convs])
                conn.execute(
                    insert(s.conv_members),
                    [dict(conv_id=k, user_id=u) for k, item in new_convs.items() for u in sorted(set(item.members))],
                )
            conn.execute(insert(m), msg_rows)
            conn.execute(insert(s.inbox), inbox_rows)
            conn.execute(
                update(c).where(c.c.conv_id == bindparam("k")).values(last_seq=bindparam("v")),
                [dict(k=k, v=v) for k, v in last_seq.items() if k in new_convs or k in existing_convs],
            )
            conn.execute(
                update(a).where(a.c.user_id == bindparam("k")).values(inbox_head=bindparam("v")),
                [dict(k=u, v=heads[u]) for u in touched_users],
            )
        return results

    def _open_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        return self._sealer.open(sealed, row_ad("messages", conv_id, seq))

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

    # --- terminals ------------------------------------------------------

    def open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        """The terminal's delivery cursor, creating the terminal if it is new.

        A new terminal starts at the lowest cursor of the account's other
        terminals, so it receives what some terminal has not yet received.
        """
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


class Store:
    """The repository behind a capacity limiter: storage work runs in worker
    threads and never blocks the trio loop."""

    def __init__(self, repo: Repository, threads: int) -> None:
        self.repo = repo
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except (OperationalError, SQLAlchemyError) as exc:
            # Only the message: a driver's text may quote parameters.
            raise StorageError(
                f"storage failed ({type(exc).__name__}); the operation had no effect, retry later"
            ) from exc

    def close(self) -> None:
        self.repo.engine.dispose()
