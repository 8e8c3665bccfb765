"""Groups: a group's state (name, members and roles, policy, requests,
mutes), sealed as one versioned value; its messages are the conversation
with the same id, whose members mirror the group's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from timpy.crypto.seal import row_ad
from timpy.errors import Code, RequestError
from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, insert_missing
from timpy.store.features.conversations import set_members
from timpy.store.rows import Row


class GroupsProtocol(Protocol):
    def get_group(self, group_id: bytes) -> tuple[bytes, int] | None: ...

    def put_group(self, group_id: bytes, state: bytes, members: Sequence[bytes], expected: int) -> int: ...


class GroupsStore(StoreBase):
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
                set_members(conn, group_id, members)
        except IntegrityError:
            raise RequestError("that group exists already", Code.BAD_REQUEST) from None
        return expected + 1


class GroupsTable(CopiedTable):
    name, wire, table, key_column, kinds = "groups", 5, s.groups, "group_id", ("conv",)
    marks_held = True
    columns = "group, sealed state, version, [member user ids]"

    def unpack(self, raw: Any) -> Row:
        g, st, v, ms = raw
        return bytes(g), bytes(st), int(v), [bytes(u) for u in ms]

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        cm, g = s.conv_members, s.groups
        group = conn.execute(select(g).where(g.c.group_id == key)).first()
        if group is None:
            return []
        members = [bytes(r.user_id) for r in conn.execute(select(cm.c.user_id).where(cm.c.conv_id == key))]
        return [(key, bytes(group.state), int(group.version), members)]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A newer state of a group replaces the one here, with its members."""
        c = s.conversations
        added = 0
        for group_id, sealed, version, members in rows:
            row = conn.execute(select(s.groups.c.version).where(s.groups.c.group_id == group_id)).first()
            if row is None:
                insert_missing(conn, s.groups, [dict(group_id=group_id, state=sealed, version=version)])
            elif int(row.version) < version:
                conn.execute(update(s.groups).where(s.groups.c.group_id == group_id)
                             .values(state=sealed, version=version))
            else:
                continue
            if conn.execute(select(c.c.conv_id).where(c.c.conv_id == group_id)).first() is None:
                insert_missing(conn, c, [dict(conv_id=group_id, last_seq=0)])
            set_members(conn, group_id, members)
            added += 1
        return added

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        g = s.groups
        for row in conn.execute(select(g.c.group_id, g.c.version).where(g.c.group_id.in_(keys))):
            yield bytes(row.group_id), ("group", int(row.version))

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        g = s.groups
        return {bytes(r[0]): int(r[1]) for r in conn.execute(select(g.c.group_id, g.c.version).where(g.c.group_id.in_(keys)))}


GROUPS = GroupsTable()
