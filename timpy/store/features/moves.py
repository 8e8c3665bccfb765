"""Moving keys between backends (shared-backend mode): counting the keys a
backend holds, the numbers that must agree on both sides of a copy, and
deleting the copies left behind. Each table says what of it is verified
and how its rows go (``timpy.store.tables``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from sqlalchemy import and_, func, select

from timpy.store import schema as s
from timpy.store.features.base import StoreBase
from timpy.store.tables import KEYS


class MovesProtocol(Protocol):
    def key_count(self) -> tuple[int, int]: ...

    def key_stats(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, tuple[int, ...]]: ...

    def forget(
        self, conv_ids: Sequence[bytes], user_ids: Sequence[bytes], homed: Callable[[bytes], bool],
        other_keys: Mapping[str, Sequence[bytes]] | None = None,
    ) -> int: ...


class MovesStore(StoreBase):
    def key_count(self) -> tuple[int, int]:
        """(conversations, accounts) stored here."""
        with self.engine.connect() as conn:
            convs = conn.execute(select(func.count()).select_from(KEYS["conv"].table)).scalar_one()
            users = conn.execute(select(func.count()).select_from(KEYS["user"].table)).scalar_one()
        return int(convs), int(users)

    def key_stats(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, tuple[int, ...]]:
        """What a backend holds of each key, to verify a copy: its head, then
        one number per table that declares one (``CopiedTable.stats``: rows,
        versions). Keys it does not hold are absent."""
        out: dict[bytes, tuple[int, ...]] = {}
        if not keys:
            return out
        keys = list(keys)
        k = KEYS[kind]
        key, head = k.table.c[k.key], k.table.c[k.head]
        with self.engine.connect() as conn:
            heads = {bytes(r[0]): int(r[1]) for r in conn.execute(select(key, head).where(key.in_(keys)))}
            columns = [st for table in k.tables() if (st := table.stats(conn, kind, keys)) is not None]
        for kk, top in heads.items():
            out[kk] = (top, *(column.get(kk, 0) for column in columns))
        return out

    def forget(
        self, conv_ids: Sequence[bytes], user_ids: Sequence[bytes], homed: Callable[[bytes], bool],
        other_keys: Mapping[str, Sequence[bytes]] | None = None,
    ) -> int:
        """Delete the copies of keys that moved to another backend, in one
        transaction: every registered table's rows of those users and
        conversations (and of ``other_keys``, by kind: attachments), and
        every message row that neither a conversation homed here (``homed``)
        nor a remaining inbox entry needs. Returns the number of rows deleted."""
        i, m = s.inbox, s.messages
        deleted = 0
        users, convs = list(user_ids), list(conv_ids)
        with self.engine.begin() as conn:
            candidates = set(convs)
            if users:
                candidates |= {
                    bytes(r[0]) for r in conn.execute(select(i.c.conv_id).where(i.c.user_id.in_(users)).distinct())
                }
            for kind, gone in (("user", users), ("conv", convs), *((k, list(v)) for k, v in (other_keys or {}).items())):
                if gone:
                    for table in KEYS[kind].tables():
                        deleted += table.forget(conn, kind, gone)
            stale = [k for k in candidates if k in set(convs) or not homed(k)]
            referenced = select(i.c.pos).where(and_(i.c.conv_id == m.c.conv_id, i.c.seq == m.c.seq)).exists()
            for start in range(0, len(stale), 500):
                chunk = stale[start : start + 500]
                deleted += conn.execute(m.delete().where(and_(m.c.conv_id.in_(chunk), ~referenced))).rowcount
        return deleted
