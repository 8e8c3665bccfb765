"""Files and media: attachments uploaded in chunks, sealed at rest, read by
the members of the conversations they were sent to.

An attachment has a random 16-byte id, so it is placed on the ring like any
key: its **owner** takes the upload (start, chunks in any order, finish with
the SHA-256 checked over the stored chunks) and copies every change to the
id's other replicas, acknowledging once the write quorum has it, as for
messages. Reads go to any replica that holds the attachment (the owner
first), so a download goes on when the owner is gone. The attachment tables
are in the registry of copied tables (the ``att`` kind of key), so the
background repair carries what a replica lacks (``timpy.im.replication``). In
shared-backend mode the attachment's rows live on the backend its id is
placed on, nodes copy nothing, and backend moves carry them.

A file message (``KIND_FILE``, or a burn-after-reading message with
``ext["file"] = "1"``) carries a ``FileRef``. A writer check at the
conversation's owner makes sure the sender may share the attachment (its
uploader, or a reader) and that the reference matches it, and grants every
member of the conversation the right to read it; a writer listener records
the message as a reference. When every referencing message is recalled or
burned, the attachment is deleted; a retention setting deletes it after a
time in any case, and unfinished uploads expire.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from timpy.cluster import catalog as ops
from timpy.config import FilesConfig
from timpy.crypto.file_urls import check_file_url, file_url
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids, kinds
from timpy.im.peers import Peers
from timpy.im.users import Identity
from timpy.im.writer import Append, Committed
from timpy.store.features.attachments import AttachmentRow
from timpy.store.repository import Store
from timpy.wire.messages import KIND_EDIT, MessageContent, file_ref_of

log = logging.getLogger("timpy.files")

QUORUM_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
SWEEP_INTERVAL = 60.0
MAX_NAME = 255
MAX_MIME = 127
_PENDING_MAX = 10_000


@dataclass(frozen=True)
class AttachmentInfo:
    id: str
    name: str
    size: int
    mime: str
    sha256: str
    chunk_size: int
    chunks: int
    uploader: str


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    chunk_size: int
    chunks: int
    have: list[int]
    complete: bool


def pack_meta(name: str, mime: str, size: int, sha256: str, uploader: str) -> bytes:
    return msgpack.packb([name, mime, size, sha256, uploader], use_bin_type=True)


def unpack_meta(raw: bytes) -> tuple[str, str, int, str, str]:
    name, mime, size, sha256, uploader = msgpack.unpackb(raw, raw=False)
    return str(name), str(mime), int(size), str(sha256), str(uploader)


def info_of(row: AttachmentRow) -> AttachmentInfo:
    name, mime, size, sha256, uploader = unpack_meta(row.meta)
    return AttachmentInfo(row.att_id.hex(), name, size, mime, sha256, row.chunk_size, row.chunks, uploader)


def parse_attachment_id(text: str) -> bytes:
    try:
        att = bytes.fromhex(text)
    except (ValueError, TypeError):
        att = b""
    if len(att) != 16:
        raise RequestError("no such file (an attachment id is 32 hex digits)", Code.NO_SUCH_FILE)
    return att


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    """Bytes of chunk ``index`` of a file of ``size`` bytes."""
    return max(0, min(chunk_size, size - index * chunk_size))


def check_upload(cfg: FilesConfig, name: str, size: int, mime: str, sha256: str) -> None:
    """What an upload must declare; raises in words a user knows."""
    if not name or len(name) > MAX_NAME or "/" in name or "\x00" in name:
        raise RequestError(f"a file name is 1 to {MAX_NAME} characters, without '/'", Code.BAD_REQUEST)
    if size < 0:
        raise RequestError("a file size cannot be negative", Code.BAD_REQUEST)
    if size > cfg.max_size:
        raise RequestError(f"the file is {size} bytes; the limit is {cfg.max_size}", Code.FILE_TOO_LARGE)
    if len(mime) > MAX_MIME:
        raise RequestError(f"a media type is at most {MAX_MIME} characters", Code.BAD_REQUEST)
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise RequestError("an upload declares its content's SHA-256 as 64 lowercase hex digits", Code.BAD_REQUEST)


class Attachments:
    def __init__(
        self,
        store: Store,
        peers: Peers,
        config: Callable[[], FilesConfig],
        clock_ms: Callable[[], int],
        url_key: bytes,
        spawn: Callable[..., bool],
        max_frame: Callable[[], int],
        shared: bool = False,
    ) -> None:
        self._max_frame = max_frame
        self._store = store
        self._peers = peers
        self._config = config
        self._now_ms = clock_ms
        self._url_key = url_key
        self._spawn = spawn
        # Nodes copy attachments to each other only in an embedded cluster.
        self._copies = peers.rpc is not None and not shared
        self._source: OrderedDict[bytes, str] = OrderedDict()  # attachment -> the replica that last served it
        # (conversation, seq) of a file message -> its attachment, for recalls and burns in flight
        self._pending: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self.deleted = 0  # attachments deleted here (last reference gone, retention, expired upload)
        self._register()

    # --- uploads, at the attachment's owner ------------------------------------------------

    async def start_upload(
        self, who: Identity, name: str, size: int, mime: str, sha256: str, upload_id: str = ""
    ) -> UploadState:
        """A new upload, or the state of one being resumed (which chunks the node has)."""
        if upload_id:
            att = parse_attachment_id(upload_id)
            raw = await self._peers.ask(ops.FILES_RESUME, ops.UploadOf(att, who.user_id))
        else:
            check_upload(self._config(), name, size, mime or "application/octet-stream", sha256)
            att = os.urandom(16)
            raw = await self._peers.ask(ops.FILES_START, ops.UploadBegin(
                att, who.user_id, who.name, name, size, mime or "application/octet-stream", sha256,
            ))
        return UploadState(str(raw[0]), int(raw[1]), int(raw[2]), [int(i) for i in raw[3]], bool(raw[4]))

    async def _start_here(self, a: ops.UploadBegin) -> list[Any]:
        att, uploader_id, uploader, name, size, mime, sha256 = (
            a.att_id, a.uploader_id, a.uploader, a.name, a.size, a.mime, a.sha256
        )
        cfg = self._config()
        check_upload(cfg, name, size, mime, sha256)
        chunk_size = min(cfg.chunk_size, self._max_frame() - 1024)  # a chunk travels in one client frame
        chunks = math.ceil(size / chunk_size)
        row = AttachmentRow(
            att, bytes(uploader_id), pack_meta(name, mime, size, sha256, uploader), chunk_size, chunks, False,
            self._now_ms(),
        )
        await self._store.run(self._store.repo.put_attachment, row)
        await self._copy(att, [["att", *_row_fields(row)]])
        return [att.hex(), row.chunk_size, chunks, [], False]

    async def _local_row(self, att: bytes) -> AttachmentRow | None:
        """The attachment's row here; a new owner that lacks it (it was not
        among the copies the write quorum waited for) takes the row, its
        readers and references from another replica first. Chunks are not
        pulled: reads go to any replica, and an unfinished upload's missing
        chunks are sent again by its client."""
        row = await self._store.run(self._store.repo.get_attachment, att)
        if row is not None or not self._copies:
            return row
        for node in self._peers.placement.replicas(att):
            if node == self._peers.self_id:
                continue
            try:
                state = await self._peers.start_call(node, ops.FILES_STATE, ops.FileOf(att)).result(READ_TIMEOUT)
            except TimpyError:
                continue
            if state:
                row = AttachmentRow(*_row_from(state[0]))
                await self._store.run(self._store.repo.put_attachment, row)
                await self._store.run(self._store.repo.add_readers, att, [bytes(u) for u in state[1]])
                for conv, seq in state[2]:
                    await self._store.run(self._store.repo.add_ref, att, bytes(conv), int(seq))
                return row
        return None

    async def _upload_row(self, att: bytes, uploader_id: bytes) -> AttachmentRow:
        row = await self._local_row(att)
        if row is None or row.uploader_id != bytes(uploader_id):
            raise RequestError("no such upload (it expired, or it is not yours); start it again", Code.NO_SUCH_FILE)
        return row

    async def _resume_here(self, a: ops.UploadOf) -> list[Any]:
        att = a.att_id
        row = await self._upload_row(att, a.uploader_id)
        have = [] if row.complete else await self._store.run(self._store.repo.chunk_indexes, att)
        return [att.hex(), row.chunk_size, row.chunks, list(range(row.chunks)) if row.complete else have, row.complete]

    async def put_chunk(self, who: Identity, upload_id: str, index: int, data: bytes) -> None:
        att = parse_attachment_id(upload_id)
        await self._peers.ask(ops.FILES_CHUNK, ops.UploadPart(att, who.user_id, index, bytes(data)))

    async def _chunk_here(self, a: ops.UploadPart) -> None:
        att, index, data = a.att_id, a.index, a.data
        row = await self._upload_row(att, a.uploader_id)
        if row.complete:
            raise RequestError("this upload is finished already", Code.BAD_REQUEST)
        size = unpack_meta(row.meta)[2]
        if not 0 <= index < row.chunks:
            raise RequestError(f"this upload has chunks 0 to {row.chunks - 1}; there is no chunk {index}", Code.BAD_REQUEST)
        expected = chunk_length(size, row.chunk_size, index)
        if len(data) != expected:
            raise RequestError(f"chunk {index} of this upload is {expected} bytes, not {len(data)}", Code.BAD_REQUEST)
        data = bytes(data)
        await self._store.run(self._store.repo.put_chunk, att, index, data)
        await self._copy(att, [["chunk", att, index, data]])

    async def finish_upload(self, who: Identity, upload_id: str) -> AttachmentInfo:
        """Check the stored content against its SHA-256 and make the attachment readable."""
        att = parse_attachment_id(upload_id)
        raw = await self._peers.ask(ops.FILES_FINISH, ops.UploadOf(att, who.user_id))
        return AttachmentInfo(*raw)

    async def _finish_here(self, a: ops.UploadOf) -> list[Any]:
        att = a.att_id
        row = await self._upload_row(att, a.uploader_id)
        info = info_of(row)
        if not row.complete:
            have = await self._store.run(self._store.repo.chunk_indexes, att)
            if len(have) < row.chunks:
                raise RequestError(
                    f"{row.chunks - len(have)} of the {row.chunks} chunks have not arrived; send them, then finish",
                    Code.BAD_REQUEST,
                )
            digest = hashlib.sha256()
            for index in range(row.chunks):
                data = await self._store.run(self._store.repo.get_chunk, att, index)
                assert data is not None
                digest.update(data)
            if digest.hexdigest() != info.sha256:
                await self._delete(att)
                raise RequestError(
                    "the uploaded content does not match its SHA-256; nothing was kept: upload the file again",
                    Code.HASH_MISMATCH,
                )
            await self._store.run(self._store.repo.complete_attachment, att)
            await self._store.run(self._store.repo.add_readers, att, [row.uploader_id])
            await self._copy(att, [["complete", att], ["readers", att, [row.uploader_id]]])
        return list(info.__dict__.values())

    # --- reads, at any replica -------------------------------------------------------------

    async def info(self, who: Identity, attachment: str) -> AttachmentInfo:
        row, _ = await self._read(parse_attachment_id(attachment), who.user_id, -1)
        return info_of(row)

    async def info_for(self, user_id: bytes, attachment: str) -> AttachmentInfo:
        """The attachment, if ``user_id`` may read it (HTTP downloads)."""
        row, _ = await self._read(parse_attachment_id(attachment), user_id, -1)
        return info_of(row)

    async def url(self, who: Identity, attachment: str) -> tuple[AttachmentInfo, str, int]:
        """The attachment and a signed download path for ``who``, valid ``url_ttl`` seconds."""
        info = await self.info(who, attachment)
        expires = int(self._now_ms() / 1000 + self._config().url_ttl)
        return info, file_url(self._url_key, info.id, who.name, expires), expires

    def check_url(self, attachment: str, user: str, expires: str, signature: str) -> str | None:
        """None when a signed download URL is valid now; else what is wrong with it."""
        return check_file_url(self._url_key, attachment, user, expires, signature, self._now_ms() / 1000)

    async def chunk(self, who: Identity, attachment: str, index: int) -> bytes:
        row, data = await self._read(parse_attachment_id(attachment), who.user_id, index)
        if data is None:
            raise RequestError(f"this file has chunks 0 to {row.chunks - 1}", Code.BAD_REQUEST)
        return data

    async def read_range(
        self, user_id: bytes, attachment: str, start: int, end: int
    ) -> tuple[AttachmentInfo, AsyncIterator[bytes]]:
        """The attachment and its bytes ``start`` to ``end`` (inclusive), chunk by
        chunk (HTTP downloads; the caller checked the signed URL)."""
        att = parse_attachment_id(attachment)
        row, _ = await self._read(att, user_id, -1)
        info = info_of(row)

        async def parts() -> AsyncIterator[bytes]:
            first, last = start // row.chunk_size, end // row.chunk_size
            for index in range(first, last + 1):
                _, data = await self._read(att, user_id, index)
                assert data is not None
                lo = start - index * row.chunk_size if index == first else 0
                hi = end - index * row.chunk_size + 1 if index == last else len(data)
                yield data[lo:hi]

        return info, parts()

    async def _read(self, att: bytes, user_id: bytes, index: int) -> tuple[AttachmentRow, bytes | None]:
        """The attachment's row and chunk ``index`` (-1: none), from this node's
        store or the first replica that holds them."""
        if not self._copies:
            raw = await self._read_here(att, user_id, index)
        else:
            raw = None
            nodes = self._peers.placement.replicas(att)
            preferred = self._source.get(att)
            if preferred in nodes:
                nodes.remove(preferred)
                nodes.insert(0, preferred)
            refused = False
            for node in nodes:
                try:
                    if node == self._peers.self_id:
                        answer = await self._read_here(att, user_id, index)
                    else:
                        answer = await self._peers.start_call(
                            node, ops.FILES_READ, ops.FileRead(att, user_id, index)
                        ).result(READ_TIMEOUT)
                except TimpyError as exc:
                    log.debug("reading an attachment from %s failed: %s", node, exc)
                    continue
                if answer and answer[0] == "ok":
                    raw = answer
                    self._source[att] = node
                    self._source.move_to_end(att)
                    while len(self._source) > 10_000:
                        self._source.popitem(last=False)
                    break
                refused = refused or bool(answer and answer[0] == "refused")
            if raw is None and refused:
                raw = ["refused"]
        if raw and raw[0] == "refused":
            raise RequestError(
                "you may not read this file: it was not sent to a conversation you are in", Code.NOT_ALLOWED
            )
        if not raw or raw[0] != "ok":
            raise RequestError("no such file (it was deleted, or its upload is not finished)", Code.NO_SUCH_FILE)
        row = AttachmentRow(*_row_from(raw[1]))
        return row, None if raw[2] is None else bytes(raw[2])

    async def _read_here(self, att: bytes, user_id: bytes, index: int) -> list[Any] | None:
        row = await self._store.run(self._store.repo.get_attachment, att)
        if row is None or not row.complete:
            return None  # not held here (or not whole yet): another replica may have it
        if not await self._may_read(row, user_id):
            return ["refused"]
        data = None
        if index >= 0:
            if index >= row.chunks:
                return ["ok", _row_fields(row), None]
            data = await self._store.run(self._store.repo.get_chunk, att, index)
            if data is None:
                return None
        return ["ok", _row_fields(row), data]

    async def _may_read(self, row: AttachmentRow, user_id: bytes) -> bool:
        """Its uploader, a user it was granted to, or a member now of a
        conversation where it was sent (one who joined a group after the file
        message reads it, as they read the group's earlier messages; the
        conversation's owner decides, by the rules history reads follow)."""
        att = row.att_id
        if row.uploader_id == user_id or await self._store.run(self._store.repo.may_read, att, user_id):
            return True
        _, refs = await self._store.run(self._store.repo.attachment_links, att)
        for conv in dict.fromkeys(c for c, _ in refs):
            try:
                found = await self._peers.ask(ops.CONV_HISTORY, ops.HistoryOf(conv, user_id, 0, -1, 0))
            except TimpyError as exc:
                log.debug("could not ask whether a user is in a conversation: %s", exc.text)
                continue
            if found.member:
                await self._store.run(self._store.repo.add_readers, att, [user_id])  # asked once
                return True
        return False

    # --- file messages: the writer's check and listener ------------------------------------

    async def check(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        """Writer check at the conversation's owner: a file message references
        an attachment its sender may share, as it is (size and hash); its
        conversation's members may read it from now on. An edit of a file
        message is refused; a recall or burn of one is noted for the listener."""
        refused: dict[Append, TimpyError] = {}
        for p in appends:
            c = p.content
            try:
                if c.kind in kinds.ON_FILES:
                    await self._note_target(p)
                    continue
                try:
                    ref = file_ref_of(c.kind, c.body, c.ext)
                except ValueError:
                    raise RequestError("a file message's body is a file reference (FileRef)", Code.INVALID_MESSAGE) from None
                if ref is not None:
                    att = parse_attachment_id(ref.attachment)
                    await self._peers.ask(ops.FILES_LINK, ops.FileLink(
                        att, p.new.sender_id, list(p.new.members), ref.size, ref.sha256
                    ))
            except TimpyError as exc:
                refused[p] = exc
        return refused

    async def _note_target(self, p: Append) -> None:
        raw = p.content.ext.get("target", "")
        if not raw.isdigit():
            return
        row = await self._store.run(self._store.repo.get_message, p.new.conv_id, int(raw))
        if row is None or not row.content:
            return
        target = MessageContent.unpack(row.content)
        try:
            ref = file_ref_of(target.kind, target.body, target.ext)
        except ValueError:
            return
        if ref is None:
            return
        if p.content.kind == KIND_EDIT:
            raise RequestError("a file message cannot be edited; recall it and send the file again", Code.NOT_ALLOWED)
        self._pending[(p.new.conv_id, int(raw))] = parse_attachment_id(ref.attachment)
        while len(self._pending) > _PENDING_MAX:
            self._pending.popitem(last=False)

    async def _link_here(self, a: ops.FileLink) -> None:
        att, sender_id, members, size, sha256 = a.att_id, a.sender_id, a.members, a.size, a.sha256
        row = await self._local_row(att)
        if row is None or not row.complete:
            raise RequestError("no such file (finish its upload before sending it)", Code.NO_SUCH_FILE)
        sender_id = bytes(sender_id)
        if not await self._may_read(row, sender_id):
            raise RequestError("you may share only files you uploaded or received", Code.NOT_ALLOWED)
        info = info_of(row)
        if (info.size, info.sha256) != (int(size), str(sha256)):
            raise RequestError("the file message does not match the file (its size or SHA-256)", Code.INVALID_MESSAGE)
        readers = [bytes(m) for m in members]
        await self._store.run(self._store.repo.add_readers, att, readers)
        await self._copy(att, [["readers", att, readers]])

    def on_commit(self, committed: Sequence[Committed]) -> None:
        """Writer listener: record file messages as references; a recall or
        burn of the last one deletes the attachment (in the background)."""
        for c in committed:
            if not c.numbered_here:
                continue
            m = c.message
            if m.kind in kinds.DROPPING_FILES:
                raw = m.ext.get("target", "")
                if raw.isdigit():
                    conv = ids.parse_conversation(m.conversation)
                    att = self._pending.pop((conv, int(raw)), None)
                    if att is not None:
                        self._spawn(self._at_owner_quietly, ops.FILES_UNREF, ops.FileUse(att, conv, int(raw)))
                continue
            try:
                ref = file_ref_of(m.kind, m.body, m.ext)
            except ValueError:
                continue
            if ref is not None:
                att = parse_attachment_id(ref.attachment)
                conv = ids.parse_conversation(m.conversation)
                self._spawn(self._at_owner_quietly, ops.FILES_REF, ops.FileUse(att, conv, m.seq))

    async def _at_owner_quietly(self, op: ops.Op[ops.FileUse, None], args: ops.FileUse) -> None:
        for attempt in range(3):
            try:
                await self._peers.ask(op, args)
                return
            except TimpyError as exc:
                if attempt == 2:
                    log.warning("could not update the references of an attachment: %s", exc.text)
                await trio.sleep(1.0)

    async def _ref_here(self, a: ops.FileUse) -> None:
        att, conv, seq = a.att_id, a.conv_id, a.seq
        if await self._local_row(att) is None:
            return  # deleted meanwhile
        await self._store.run(self._store.repo.add_ref, att, bytes(conv), int(seq))
        await self._copy(att, [["ref", att, bytes(conv), int(seq)]])

    async def _unref_here(self, a: ops.FileUse) -> None:
        att, conv, seq = a.att_id, a.conv_id, a.seq
        if await self._local_row(att) is None:
            return
        left = await self._store.run(self._store.repo.remove_ref, att, bytes(conv), int(seq))
        if left == 0:
            await self._delete(att)
        else:
            await self._copy(att, [["unref", att, bytes(conv), int(seq)]])

    async def _delete(self, att: bytes) -> None:
        await self._store.run(self._store.repo.delete_attachment, att)
        self.deleted += 1
        await self._copy(att, [["delete", att]])

    # --- retention ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete, on this node's store, attachments past their retention and
        unfinished uploads past their expiry; returns how many. Every replica
        sweeps its own copies by the same rule."""
        cfg = self._config()
        now = self._now_ms()
        complete_before = int(now - cfg.retention * 1000) if cfg.retention > 0 else None
        gone = await self._store.run(
            self._store.repo.expired_attachments, complete_before, int(now - cfg.upload_expiry * 1000), 1000
        )
        for att in gone:
            await self._store.run(self._store.repo.delete_attachment, att)
        self.deleted += len(gone)
        return len(gone)

    async def run(self) -> None:
        """Sweep now and then, until cancelled."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except TimpyError as exc:
                log.warning("could not delete expired attachments: %s", exc.text)

    # --- copies to the replicas --------------------------------------------------------------

    async def _copy(self, att: bytes, changes: list[list[Any]]) -> None:
        """Apply ``changes`` on the attachment's other replicas; return once the
        write quorum (this node included) has them."""
        if not self._copies:
            return
        placement = self._peers.placement
        nodes = [n for n in placement.replicas(att) if n != self._peers.self_id]
        need = placement.acks_needed(att)
        if not nodes:
            return
        self._peers.require_write()
        epoch = self._peers.epoch_number
        calls = [self._peers.start_call(n, ops.FILES_APPLY, ops.FileChanges(changes, epoch)) for n in nodes]
        acked = 0
        done = trio.Event()
        if need <= 0:
            done.set()

        async def wait(call: Any) -> None:
            nonlocal acked
            try:
                await call.result(QUORUM_TIMEOUT)
            except TimpyError as exc:
                log.debug("copy of an attachment to %s failed: %s", call.address, exc)
                return
            acked += 1
            if acked >= need:
                done.set()

        with trio.move_on_after(QUORUM_TIMEOUT + 0.5):
            async with trio.open_nursery() as nursery:
                for call in calls:
                    nursery.start_soon(wait, call)
                await done.wait()
                nursery.cancel_scope.cancel()
        if acked < need:
            raise TimpyError(
                "the file did not reach enough nodes to be kept safely; send it again", Code.UNAVAILABLE
            )
        self._peers.require_write()

    async def _apply(self, changes: list[Any]) -> None:
        repo = self._store.repo
        for op in changes:
            what, att = op[0], bytes(op[1])
            if what == "att":
                await self._store.run(repo.put_attachment, AttachmentRow(*_row_from(op[1:])))
            elif what == "chunk":
                await self._store.run(repo.put_chunk, att, int(op[2]), bytes(op[3]))
            elif what == "complete":
                await self._store.run(repo.complete_attachment, att)
            elif what == "readers":
                await self._store.run(repo.add_readers, att, [bytes(u) for u in op[2]])
            elif what == "ref":
                await self._store.run(repo.add_ref, att, bytes(op[2]), int(op[3]))
            elif what == "unref":
                await self._store.run(repo.remove_ref, att, bytes(op[2]), int(op[3]))
            elif what == "delete":
                await self._store.run(repo.delete_attachment, att)

    def _register(self) -> None:
        peers = self._peers
        peers.serve(ops.FILES_START, self._start_here)
        peers.serve(ops.FILES_RESUME, self._resume_here)
        peers.serve(ops.FILES_CHUNK, self._chunk_here)
        peers.serve(ops.FILES_FINISH, self._finish_here)
        peers.serve(ops.FILES_LINK, self._link_here)
        peers.serve(ops.FILES_REF, self._ref_here)
        peers.serve(ops.FILES_UNREF, self._unref_here)
        ownership = peers.ownership

        async def apply(a: ops.FileChanges) -> None:
            if ownership is None:
                await self._apply(a.ops)
                return
            async with ownership.applying(a.epoch):  # a stale owner's copy is refused
                await self._apply(a.ops)

        async def read(a: ops.FileRead) -> list[Any] | None:
            return await self._read_here(a.att_id, a.user_id, a.index)

        async def state(a: ops.FileOf) -> list[Any] | None:
            row = await self._store.run(self._store.repo.get_attachment, a.att_id)
            if row is None:
                return None
            readers, refs = await self._store.run(self._store.repo.attachment_links, a.att_id)
            return [_row_fields(row), readers, [list(r) for r in refs]]

        peers.serve(ops.FILES_APPLY, apply)
        peers.serve(ops.FILES_STATE, state)
        peers.serve(ops.FILES_READ, read)


def _row_fields(row: AttachmentRow) -> list[Any]:
    return [row.att_id, row.uploader_id, row.meta, row.chunk_size, row.chunks, row.complete, row.created_ms]


def _row_from(raw: Sequence[Any]) -> tuple[bytes, bytes, bytes, int, int, bool, int]:
    att, uploader, meta, chunk_size, chunks, complete, created = raw
    return bytes(att), bytes(uploader), bytes(meta), int(chunk_size), int(chunks), bool(complete), int(created)

