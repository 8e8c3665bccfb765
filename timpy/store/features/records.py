"""Records: small sealed values kept per key (a user or a conversation),
each of a kind and with a version: a user's roster and presence status,
the relation of two users, a conversation's unread burn-after-reading
messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from timpy.crypto.seal import row_ad
from timpy.errors import Code, RequestError
from timpy.store import schema as s
from timpy.store.features.base import (
    CopiedTable,
    StoreBase,
    driver_first,
    driver_rows,
    insert_missing,
)
from timpy.store.rows import Copies, Row


class RecordsProtocol(Protocol):
    def get_record(self, key_id: bytes, kind: str) -> tuple[bytes, int] | None: ...

    def get_records(self, key_ids: Sequence[bytes], kind: str) -> dict[bytes, bytes]: ...

    def put_record(self, key_id: bytes, kind: str, state: bytes, expected: int) -> int: ...

    def record_copies(self, key_id: bytes, kind: str) -> Copies: ...


class RecordsStore(StoreBase):
    def get_record(self, key_id: bytes, kind: str) -> tuple[bytes, int] | None:
        """A record's value (opened) and version."""
        with self.engine.connect() as conn:  # fixed SQL: read for every conversation list notice
            row = driver_first(conn, "SELECT state, version FROM records WHERE key_id = ? AND kind = ?", (key_id, kind))
        if row is None:
            return None
        return self._sealer.open(bytes(row[0]), row_ad("records", key_id, kind)), int(row[1])

    def get_records(self, key_ids: Sequence[bytes], kind: str) -> dict[bytes, bytes]:
        """The values (opened) of one kind of record for many keys; absent keys are left out."""
        keys = list(key_ids)
        if not keys:
            return {}
        out: dict[bytes, bytes] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):  # fixed SQL through the DB-API: logins' presence reads these
                chunk = keys[start : start + 500]
                rows = driver_rows(
                    conn, f"SELECT key_id, state FROM records WHERE kind = ? AND key_id IN ({', '.join('?' * len(chunk))})",
                    (kind, *chunk))
                for key_id, state in rows:
                    out[bytes(key_id)] = self._sealer.open(bytes(state), row_ad("records", bytes(key_id), kind))
        return out

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
            return Copies(records=[rec for rec in records_of(conn, [key_id]) if rec[1] == kind])


def records_of(conn: Any, keys: list[bytes]) -> list[tuple[bytes, str, bytes, int]]:
    r = s.records
    return [
        (bytes(row.key_id), str(row.kind), bytes(row.state), int(row.version))
        for row in conn.execute(select(r).where(r.c.key_id.in_(keys)))
    ]


class RecordsTable(CopiedTable):
    name, wire, table, key_column, kinds = "records", 6, s.records, "key_id", ("conv", "user")
    columns = "key, kind, sealed state, version"

    def unpack(self, raw: Any) -> Row:
        k, kind, st, v = raw
        return bytes(k), str(kind), bytes(st), int(v)

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        return records_of(conn, [key])

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A record missing here, or a newer version of it."""
        r = s.records
        added = 0
        for key, kind, sealed, version in rows:
            have = conn.execute(select(r.c.version).where(and_(r.c.key_id == key, r.c.kind == kind))).first()
            if have is None:
                insert_missing(conn, r, [dict(key_id=key, kind=kind, state=sealed, version=version)])
                added += 1
            elif int(have.version) < version:
                conn.execute(update(r).where(and_(r.c.key_id == key, r.c.kind == kind, r.c.version < version))
                             .values(state=sealed, version=version))
                added += 1
        return added

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        r = s.records
        for row in conn.execute(select(r.c.key_id, r.c.kind, r.c.version).where(r.c.key_id.in_(keys))):
            yield bytes(row.key_id), ("record", str(row.kind), int(row.version))

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        """The sum of the versions of each key's records."""
        r = s.records
        rows = conn.execute(select(r.c.key_id, func.sum(r.c.version)).where(r.c.key_id.in_(keys)).group_by(r.c.key_id))
        return {bytes(row[0]): int(row[1]) for row in rows}


RECORDS = RecordsTable()
