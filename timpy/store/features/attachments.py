"""Storage of attachments: the ``Repository`` mixin (one database), its
protocol, and the ``ShardedRepository`` mixin (shared backends, each
attachment on the backend its id is placed on).

Its tables are in ``LOCAL_TABLES`` (``timpy.store.tables``), not declared as
copied tables: an attachment id is neither a conversation nor a user key, and
the files feature copies every change to the id's replicas itself
(``files.apply``); repair and backend moves do not carry attachments.

An attachment is one row of sealed metadata, its chunks (each sealed on its
own, the associated data naming the attachment and the chunk's index, so a
chunk moved to another place or another attachment fails to open), who may
read it, and the messages referencing it. Plaintexts come in and go out;
sealing happens here, as in the rest of the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import delete, func, insert, select, update

from timpy.crypto.seal import row_ad
from timpy.store import schema as s
from timpy.store.features.base import StoreBase, insert_missing


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
                conn.execute(update(a).where(a.c.att_id == row.att_id).values(complete=True))

    def get_attachment(self, att_id: bytes) -> AttachmentRow | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(s.attachments).where(s.attachments.c.att_id == att_id)).first()
        if r is None:
            return None
        return AttachmentRow(
            att_id, bytes(r.uploader_id), self._sealer.open(r.meta, _meta_ad(att_id)), int(r.chunk_size),
            int(r.chunks), bool(r.complete), int(r.created_ms),
        )

    def complete_attachment(self, att_id: bytes) -> None:
        a = s.attachments
        with self.engine.begin() as conn:
            conn.execute(update(a).where(a.c.att_id == att_id).values(complete=True))

    def put_chunk(self, att_id: bytes, index: int, data: bytes) -> None:
        """Store (or replace, while the upload is open) one chunk, sealed."""
        c = s.attachment_chunks
        sealed = self._sealer.seal(data, _chunk_ad(att_id, index))
        with self.engine.begin() as conn:
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
            _insert_ignore(conn, s.attachment_refs, [{"att_id": att_id, "conv_id": conv_id, "seq": seq}])

    def remove_ref(self, att_id: bytes, conv_id: bytes, seq: int) -> int:
        """Forget one referencing message; returns how many references remain."""
        r = s.attachment_refs
        with self.engine.begin() as conn:
            conn.execute(delete(r).where(r.c.att_id == att_id, r.c.conv_id == conv_id, r.c.seq == seq))
            return int(conn.execute(select(func.count()).select_from(r).where(r.c.att_id == att_id)).scalar_one())

    def delete_attachment(self, att_id: bytes) -> None:
        with self.engine.begin() as conn:
            for table in (s.attachment_chunks, s.attachment_readers, s.attachment_refs, s.attachments):
                conn.execute(delete(table).where(table.c.att_id == att_id))

    def expired_attachments(self, complete_before_ms: int | None, open_before_ms: int, limit: int) -> list[bytes]:
        """Attachments past their retention (complete ones created before
        ``complete_before_ms``; None: kept) or unfinished uploads started before ``open_before_ms``."""
        a = s.attachments
        cond = (a.c.complete == False) & (a.c.created_ms < open_before_ms)  # noqa: E712
        if complete_before_ms is not None:
            cond = cond | ((a.c.complete == True) & (a.c.created_ms < complete_before_ms))  # noqa: E712
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
