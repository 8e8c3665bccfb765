"""Storage of attachments: the ``Repository`` mixin (one database), its
protocol, the ``ShardedRepository`` mixin (shared backends, each attachment
on the backend its id is placed on), and the attachment tables' entries in
the registry of copied tables (``timpy.store.tables``).

An attachment is its own kind of key (``"att"``, the attachment id): one row
of sealed metadata, its chunks (its numbered slots, by index: each sealed on
its own, the associated data naming the attachment and the chunk's index,
so a chunk moved to another place or another attachment fails to open), who
may read it, and the messages referencing it. Being in the registry, its
rows are carried by repair between replicas and moved between backends like
a conversation's. A deleted attachment keeps its row, emptied and marked
``deleted``, as a tombstone: a replica that missed the deletion loses its
copy to it at the next repair instead of bringing the file back.

Plaintexts come in and go out; sealing happens here, as in the rest of the
repository.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, delete, func, insert, select, update

from timpy.crypto.seal import row_ad
from timpy.store import digest as d
from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, counts, insert_missing
from timpy.store.rows import Row


@dataclass(frozen=True)
class AttachmentRow:
    att_id: bytes
    uploader_id: bytes
    meta: bytes  # plaintext (the feature's own encoding): name, type, size, hash, uploader
    chunk_size: int
    chunks: int
    complete: bool
    created_ms: int


def _meta_ad(att_id: bytes) -> bytes:
    return row_ad("attachments", att_id, "meta")


def _chunk_ad(att_id: bytes, index: int) -> bytes:
    return row_ad("attachment_chunks", att_id, index)


def _insert_ignore(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        insert_missing(conn, table, rows)


class AttachmentsProtocol(Protocol):
    def put_attachment(self, row: AttachmentRow) -> None: ...

    def get_attachment(self, att_id: bytes) -> AttachmentRow | None: ...

    def complete_attachment(self, att_id: bytes) -> None: ...

    def put_chunk(self, att_id: bytes, index: int, data: bytes) -> None: ...

    def get_chunk(self, att_id: bytes, index: int) -> bytes | None: ...

    def chunk_indexes(self, att_id: bytes) -> list[int]: ...

    def add_readers(self, att_id: bytes, user_ids: Sequence[bytes]) -> None: ...

    def may_read(self, att_id: bytes, user_id: bytes) -> bool: ...

    def attachment_links(self, att_id: bytes) -> tuple[list[bytes], list[tuple[bytes, int]]]: ...

    def add_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> None: ...

    def remove_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> int: ...

    def delete_attachment(self, att_id: bytes) -> None: ...

    def expired_attachments(self, complete_before_ms: int | None, open_before_ms: int, limit: int) -> list[bytes]: ...


class AttachmentsStore(StoreBase):
    """Mixed into ``Repository``: every attachment query on one database."""

    def put_attachment(self, row: AttachmentRow) -> None:
        """Store an attachment's row (kept as it is if it exists: copies are idempotent)."""
        a = s.attachments
        with self.engine.begin() as conn:
            _insert_ignore(conn, a, [{
                "att_id": row.att_id, "uploader_id": row.uploader_id,
                "meta": self._sealer.seal(row.meta, _meta_ad(row.att_id)), "chunk_size": row.chunk_size,
                "chunks": row.chunks, "complete": row.complete, "created_ms": row.created_ms,
            }])
            if row.complete:
                conn.execute(update(a).where(_live(a, row.att_id)).values(complete=True))

    def get_attachment(self, att_id: bytes) -> AttachmentRow | None:
        """The attachment's row; None when it is not here or was deleted."""
        with self.engine.connect() as conn:
            r = conn.execute(select(s.attachments).where(_live(s.attachments, att_id))).first()
        if r is None:
            return None
        return AttachmentRow(
            att_id, bytes(r.uploader_id), self._sealer.open(r.meta, _meta_ad(att_id)), int(r.chunk_size),
            int(r.chunks), bool(r.complete), int(r.created_ms),
        )

    def complete_attachment(self, att_id: bytes) -> None:
        a = s.attachments
        with self.engine.begin() as conn:
            conn.execute(update(a).where(_live(a, att_id)).values(complete=True))

    def put_chunk(self, att_id: bytes, index: int, data: bytes) -> None:
        """Store (or replace, while the upload is open) one chunk, sealed;
        nothing for a deleted attachment."""
        c = s.attachment_chunks
        sealed = self._sealer.seal(data, _chunk_ad(att_id, index))
        with self.engine.begin() as conn:
            if _deleted_here(conn, [att_id]):
                return
            conn.execute(delete(c).where(c.c.att_id == att_id, c.c.idx == index))
            conn.execute(insert(c).values(att_id=att_id, idx=index, content=sealed))

    def get_chunk(self, att_id: bytes, index: int) -> bytes | None:
        c = s.attachment_chunks
        with self.engine.connect() as conn:
            sealed = conn.execute(select(c.c.content).where(c.c.att_id == att_id, c.c.idx == index)).scalar()
        return None if sealed is None else self._sealer.open(sealed, _chunk_ad(att_id, index))

    def chunk_indexes(self, att_id: bytes) -> list[int]:
        c = s.attachment_chunks
        with self.engine.connect() as conn:
            return [int(i) for i in conn.execute(select(c.c.idx).where(c.c.att_id == att_id).order_by(c.c.idx)).scalars()]

    def add_readers(self, att_id: bytes, user_ids: Sequence[bytes]) -> None:
        with self.engine.begin() as conn:
            if _deleted_here(conn, [att_id]):
                return
            _insert_ignore(conn, s.attachment_readers, [{"att_id": att_id, "user_id": u} for u in set(user_ids)])

    def may_read(self, att_id: bytes, user_id: bytes) -> bool:
        r = s.attachment_readers
        with self.engine.connect() as conn:
            return conn.execute(select(r.c.user_id).where(r.c.att_id == att_id, r.c.user_id == user_id)).first() is not None

    def attachment_links(self, att_id: bytes) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """Who may read an attachment, and the messages referencing it."""
        r, f = s.attachment_readers, s.attachment_refs
        with self.engine.connect() as conn:
            readers = [bytes(u) for u in conn.execute(select(r.c.user_id).where(r.c.att_id == att_id)).scalars()]
            refs = [(bytes(x.conv_id), int(x.seq)) for x in conn.execute(select(f.c.conv_id, f.c.seq).where(f.c.att_id == att_id))]
        return readers, refs

    def add_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> None:
        with self.engine.begin() as conn:
            if _deleted_here(conn, [att_id]):
                return
            _insert_ignore(conn, s.attachment_refs, [{"att_id": att_id, "conv_id": conv_id, "seq": seq}])

    def remove_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> int:
        """Forget one referencing message; returns how many references remain."""
        r = s.attachment_refs
        with self.engine.begin() as conn:
            conn.execute(delete(r).where(r.c.att_id == att_id, r.c.conv_id == conv_id, r.c.seq == seq))
            return int(conn.execute(select(func.count()).select_from(r).where(r.c.att_id == att_id)).scalar_one())

    def delete_attachment(self, att_id: bytes) -> None:
        """Delete the attachment's content, readers and references, leaving a
        tombstone (its row, emptied; one here even if the row never came)."""
        tombstone = {
            "att_id": att_id, "uploader_id": b"", "meta": b"", "chunk_size": 0, "chunks": 0, "complete": False,
            "created_ms": 0, "deleted": True,
        }
        with self.engine.begin() as conn:
            _bury(conn, [att_id])
            _insert_ignore(conn, s.attachments, [tombstone])

    def expired_attachments(self, complete_before_ms: int | None, open_before_ms: int, limit: int) -> list[bytes]:
        """Attachments past their retention (complete ones created before
        ``complete_before_ms``; None: kept) or unfinished uploads started before ``open_before_ms``."""
        a = s.attachments
        cond = (a.c.complete == False) & (a.c.created_ms < open_before_ms)  # noqa: E712
        if complete_before_ms is not None:
            cond = cond | ((a.c.complete == True) & (a.c.created_ms < complete_before_ms))  # noqa: E712
        cond = cond & (a.c.deleted == False)  # noqa: E712
        with self.engine.connect() as conn:
            return [bytes(x) for x in conn.execute(select(a.c.att_id).where(cond).limit(limit)).scalars()]


class ShardedAttachmentsStore:
    """Mixed into ``ShardedRepository``: each call goes to the backend of its attachment id."""

    if TYPE_CHECKING:  # ShardedRepository's
        map: Any
        names: list[str]

        def _on(self, name: str, fn: Any, *args: Any) -> Any: ...

        def _writing(self, keys: Sequence[bytes]) -> Any: ...

    def _at(self, att_id: bytes, fn: Any, *args: Any) -> Any:
        return self._on(self.map.place(att_id), fn, att_id, *args)

    def _write_at(self, att_id: bytes, fn: Any, *args: Any) -> Any:
        with self._writing([att_id]) as m:
            return self._on(m.place(att_id), fn, att_id, *args)

    def put_attachment(self, row: AttachmentRow) -> None:
        with self._writing([row.att_id]) as m:
            self._on(m.place(row.att_id), AttachmentsStore.put_attachment, row)

    def get_attachment(self, att_id: bytes) -> AttachmentRow | None:
        return self._at(att_id, AttachmentsStore.get_attachment)  # type: ignore[no-any-return]

    def complete_attachment(self, att_id: bytes) -> None:
        self._write_at(att_id, AttachmentsStore.complete_attachment)

    def put_chunk(self, att_id: bytes, index: int, data: bytes) -> None:
        self._write_at(att_id, AttachmentsStore.put_chunk, index, data)

    def get_chunk(self, att_id: bytes, index: int) -> bytes | None:
        return self._at(att_id, AttachmentsStore.get_chunk, index)  # type: ignore[no-any-return]

    def chunk_indexes(self, att_id: bytes) -> list[int]:
        return self._at(att_id, AttachmentsStore.chunk_indexes)  # type: ignore[no-any-return]

    def add_readers(self, att_id: bytes, user_ids: Sequence[bytes]) -> None:
        self._write_at(att_id, AttachmentsStore.add_readers, user_ids)

    def may_read(self, att_id: bytes, user_id: bytes) -> bool:
        return self._at(att_id, AttachmentsStore.may_read, user_id)  # type: ignore[no-any-return]

    def attachment_links(self, att_id: bytes) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        return self._at(att_id, AttachmentsStore.attachment_links)  # type: ignore[no-any-return]

    def add_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> None:
        self._write_at(att_id, AttachmentsStore.add_ref, conv_id, seq)

    def remove_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> int:
        return self._write_at(att_id, AttachmentsStore.remove_ref, conv_id, seq)  # type: ignore[no-any-return]

    def delete_attachment(self, att_id: bytes) -> None:
        self._write_at(att_id, AttachmentsStore.delete_attachment)

    def expired_attachments(self, complete_before_ms: int | None, open_before_ms: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        for name in self.names:
            out += self._on(name, AttachmentsStore.expired_attachments, complete_before_ms, open_before_ms, limit)
        return out


# --- tombstones -------------------------------------------------------------------------


def _live(a: Any, att_id: bytes) -> Any:
    return and_(a.c.att_id == att_id, a.c.deleted == False)  # noqa: E712


def _deleted_here(conn: Any, att_ids: Sequence[bytes]) -> set[bytes]:
    """Of ``att_ids``, those with a tombstone here; called by a transaction
    about to write rows of them (chunks, readers, references).

    The attachments' rows are locked first (a write that changes nothing:
    the rows' locks on PostgreSQL and MariaDB, the database's write lock on
    SQLite, whose driver otherwise begins the transaction only at the first
    write), so a tombstone cannot commit between this check and the write
    that follows it; ``_bury`` takes the same row first. Without it a copy
    arriving as the attachment was deleted could leave a row beside the
    tombstone that nothing removes."""
    a = s.attachments
    keys = sorted(set(att_ids))
    if not keys:
        return set()
    conn.execute(update(a).where(a.c.att_id.in_(keys)).values(deleted=a.c.deleted))
    rows = conn.execute(select(a.c.att_id).where(and_(a.c.att_id.in_(keys), a.c.deleted == True)))  # noqa: E712
    return {bytes(r[0]) for r in rows}


def _bury(conn: Any, att_ids: list[bytes]) -> int:
    """Delete the content, readers and references of attachments and empty
    their rows into tombstones (rows not here are left to the caller)."""
    # The row first: its lock makes a copy that checked for the tombstone
    # (``_deleted_here``) finish before the rows below are deleted.
    a = s.attachments
    conn.execute(update(a).where(a.c.att_id.in_(att_ids)).values(
        deleted=True, meta=b"", uploader_id=b"", chunk_size=0, chunks=0, complete=False, created_ms=0,
    ))
    deleted = 0
    for table in (s.attachment_chunks, s.attachment_readers, s.attachment_refs):
        deleted += int(conn.execute(delete(table).where(table.c.att_id.in_(att_ids))).rowcount)
    return deleted


# --- the registry's entries (timpy.store.tables): the "att" kind of key -----------------


class AttachmentsTable(CopiedTable):
    """The attachment's row: what makes it held here; a tombstone wins over a live row."""

    name, wire, table, key_column, kinds = "attachments", 9, s.attachments, "att_id", ("att",)
    marks_held = True
    columns = "att id, uploader id, sealed meta, chunk size, chunks, complete, created ms, deleted"

    def unpack(self, raw: Any) -> Row:
        att, uploader, meta, chunk_size, chunks, complete, created, deleted = raw
        return (bytes(att), bytes(uploader), bytes(meta), int(chunk_size), int(chunks), bool(complete), int(created),
                bool(deleted))

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        a = s.attachments
        return [
            (bytes(r.att_id), bytes(r.uploader_id), bytes(r.meta), int(r.chunk_size), int(r.chunks), bool(r.complete),
             int(r.created_ms), bool(r.deleted))
            for r in conn.execute(select(a).where(a.c.att_id == key))
        ]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A row missing here; ``complete`` and ``deleted`` only move forward."""
        a = s.attachments
        keys = [r[0] for r in rows]
        here = {bytes(r.att_id): (bool(r.complete), bool(r.deleted))
                for r in conn.execute(select(a.c.att_id, a.c.complete, a.c.deleted).where(a.c.att_id.in_(keys)))}
        changed = 0
        for att, uploader, meta, chunk_size, chunks, complete, created, deleted in rows:
            have = here.get(att)
            if have is None:
                insert_missing(conn, a, [dict(
                    att_id=att, uploader_id=uploader, meta=meta, chunk_size=chunk_size, chunks=chunks,
                    complete=complete, created_ms=created, deleted=deleted,
                )])
                if deleted:
                    _bury(conn, [att])  # rows that came before the tombstone
                here[att] = (complete, deleted)
                changed += 1
            elif have[1]:
                continue  # deleted here: the tombstone stays
            elif deleted:
                _bury(conn, [att])
                here[att] = (False, True)
                changed += 1
            elif complete and not have[0]:
                conn.execute(update(a).where(_live(a, att)).values(complete=True))
                here[att] = (True, False)
                changed += 1
        return changed

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        a = s.attachments
        q = select(a.c.att_id, a.c.uploader_id, a.c.chunk_size, a.c.chunks, a.c.complete, a.c.deleted)
        for r in conn.execute(q.where(a.c.att_id.in_(keys))):
            if r.deleted:
                yield bytes(r.att_id), ("deleted",)
            else:
                yield bytes(r.att_id), ("att", bytes(r.uploader_id), int(r.chunk_size), int(r.chunks), bool(r.complete))

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        """1 for a row being uploaded, 2 once complete, 3 for a tombstone."""
        a = s.attachments
        rows = conn.execute(select(a.c.att_id, a.c.complete, a.c.deleted).where(a.c.att_id.in_(keys)))
        return {bytes(r.att_id): 3 if r.deleted else 2 if r.complete else 1 for r in rows}


class AttachmentChunksTable(CopiedTable):
    """The chunks: the numbered slots of an attachment, by index (held or not)."""

    name, wire, table, key_column, kinds = "attachment_chunks", 10, s.attachment_chunks, "att_id", ("att",)
    slots_of = "att"
    columns = "att id, index, sealed content"

    def unpack(self, raw: Any) -> Row:
        att, idx, content = raw
        return bytes(att), int(idx), bytes(content)

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """Chunks missing here (a chunk held is kept); none of a deleted attachment."""
        c = s.attachment_chunks
        gone = _deleted_here(conn, [r[0] for r in rows])
        wanted = [r for r in rows if r[0] not in gone]
        if not wanted:
            return 0
        held: set[tuple[bytes, int]] = set()
        for att in {r[0] for r in wanted}:
            idxs = [r[1] for r in wanted if r[0] == att]
            held |= {(att, int(i)) for i in conn.execute(
                select(c.c.idx).where(and_(c.c.att_id == att, c.c.idx.in_(idxs)))
            ).scalars()}
        new = [dict(att_id=a, idx=i, content=x) for a, i, x in wanted if (a, i) not in held]
        if new:
            insert_missing(conn, c, new)
        return len(new)

    def apply_slots(self, repo: StoreBase, conn: Any, rows: list[Row], owner_write: bool) -> int:
        return self.apply(repo, conn, rows)

    def slots(self, conn: Any, keys: list[bytes]) -> dict[bytes, dict[int, bytes]]:
        c = s.attachment_chunks
        out: dict[bytes, dict[int, bytes]] = {k: {} for k in keys}
        for start in range(0, len(keys), 500):
            for r in conn.execute(select(c.c.att_id, c.c.idx).where(c.c.att_id.in_(keys[start : start + 500]))):
                out[bytes(r.att_id)][int(r.idx)] = d.chunk_hash(int(r.idx))
        return out

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, s.attachment_chunks.c.att_id, keys)


class _AttachmentSetTable(CopiedTable):
    """A set of rows per attachment (who may read it, the messages
    referencing it): rows missing here are added; none of a deleted one."""

    kinds = ("att",)
    key_column = "att_id"
    fields: tuple[str, ...]

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        t = self.table
        return [self._row(r) for r in conn.execute(select(*(t.c[f] for f in self.fields)).where(t.c.att_id == key))]

    def _row(self, r: Any) -> Row:
        return tuple(int(v) if isinstance(v, int) else bytes(v) for v in r)

    def unpack(self, raw: Any) -> Row:
        return self._row(raw)

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        gone = _deleted_here(conn, [r[0] for r in rows])
        t = self.table
        held: set[Row] = set()
        for att in {r[0] for r in rows} - gone:
            held |= {self._row(r) for r in conn.execute(select(*(t.c[f] for f in self.fields)).where(t.c.att_id == att))}
        new = {tuple(r) for r in rows if r[0] not in gone} - held
        if new:
            insert_missing(conn, t, [dict(zip(self.fields, r, strict=True)) for r in sorted(new)])
        return len(new)

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        t = self.table
        for r in conn.execute(select(*(t.c[f] for f in self.fields)).where(t.c.att_id.in_(keys))):
            row = self._row(r)
            yield row[0], (self.name, *row[1:])

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        return counts(conn, self.table.c.att_id, keys)


class AttachmentReadersTable(_AttachmentSetTable):
    name, wire, table = "attachment_readers", 11, s.attachment_readers
    fields = ("att_id", "user_id")
    columns = "att id, user id"


class AttachmentRefsTable(_AttachmentSetTable):
    name, wire, table = "attachment_refs", 12, s.attachment_refs
    fields = ("att_id", "conv_id", "seq")
    columns = "att id, conversation id, seq"


ATTACHMENTS = AttachmentsTable()
ATTACHMENT_CHUNKS = AttachmentChunksTable()
ATTACHMENT_READERS = AttachmentReadersTable()
ATTACHMENT_REFS = AttachmentRefsTable()
