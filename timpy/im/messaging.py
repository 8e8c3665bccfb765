"""1:1 messaging: send, history, offline sync and delivery acknowledgements.

All appends on a node go through one writer task. It takes every send that
is waiting, stores the lot in one transaction (group commit), and only then
pushes to live terminals and acknowledges, in commit order. So sequences are
gap-free, an acknowledged message is durable, and pushes reach each terminal
in sequence order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids
from timpy.im.accounts import Identity
from timpy.im.messages import (
    KIND_CUSTOM_MIN,
    KNOWN_KINDS,
    ChatMessage,
    Delivery,
    SendResult,
    pack_content,
    unpack_content,
)
from timpy.im.terminals import LiveTerminal, TerminalRegistry
from timpy.store.repository import Appended, NewMessage, Store, StoredMessage

MAX_EXT_BYTES = 4096
MAX_BATCH = 512


_FLUSH_CURSORS = None  # queue marker: store acknowledged cursors, nothing to append


@dataclass(eq=False)
class _Pending:
    new: NewMessage
    conversation: str
    done: trio.Event
    result: SendResult | None = None
    error: TimpyError | None = None


class Messenger:
    def __init__(
        self,
        store: Store,
        indexer: BlindIndexer,
        registry: TerminalRegistry,
        limits: Limits,
        clock_ms: Callable[[], int],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._registry = registry
        self._limits = limits
        self._now = clock_ms
        self._send_q, self._recv_q = trio.open_memory_channel[_Pending | None](math.inf)
        self._known_users: set[bytes] = set()
        # Acknowledged positions not yet stored; written with the next batch.
        self._cursors: dict[tuple[bytes, bytes], int] = {}
        self._cursor_flush_queued = False
        self.stored_count = 0  # messages stored by this node since it started

    # --- the writer -----------------------------------------------------

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store and deliver queued sends until ``close`` is called and the queue is empty."""
        task_status.started()
        async with self._recv_q:
            async for first in self._recv_q:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._recv_q.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._write(batch)
        if self._cursors:
            await self._write([])

    async def _write(self, queued: list[_Pending | None]) -> None:
        batch = [p for p in queued if p is not _FLUSH_CURSORS]
        cursors, self._cursors = self._cursors, {}
        self._cursor_flush_queued = False
        try:
            results: list[Appended] = await self._store.run(
                self._store.repo.append_messages, [p.new for p in batch], cursors
            )
        except TimpyError as exc:
            for key, pos in cursors.items():  # keep them for the next try
                self._cursors[key] = max(pos, self._cursors.get(key, 0))
            if isinstance(exc, RequestError) and len(batch) > 1:
                # One send's bad request must not fail the others: store them one by one.
                for p in batch:
                    await self._write([p])
                return
            for p in batch:
                p.error = exc
                p.done.set()
            return
        for p, appended in zip(batch, results, strict=True):
            message = unpack_content(p.conversation, appended.seq, appended.created_ms, appended.content)
            if not appended.duplicate:
                self.stored_count += 1
                for user_id, pos in appended.inbox.items():
                    self._registry.deliver(user_id, Delivery(pos, message))
            p.result = SendResult(message, appended.duplicate)
            p.done.set()

    def close(self) -> None:
        """No new sends; the writer finishes what is queued, then returns."""
        self._send_q.close()

    # --- sending --------------------------------------------------------

    def _validate(self, client_id: str, kind: int, body: bytes, ext: dict[str, str]) -> None:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= ids.MAX_CLIENT_ID:
            raise RequestError(
                f"a message needs a client_id of 1 to {ids.MAX_CLIENT_ID} characters", Code.INVALID_MESSAGE
            )
        if not isinstance(kind, int) or (kind not in KNOWN_KINDS and kind < KIND_CUSTOM_MIN):
            raise RequestError(f"unknown message kind {kind}", Code.INVALID_MESSAGE)
        if not isinstance(body, bytes):
            raise RequestError("a message body is bytes", Code.INVALID_MESSAGE)
        if len(body) > self._limits.max_body:
            raise RequestError(
                f"message body of {len(body)} bytes exceeds the limit of {self._limits.max_body}",
                Code.BODY_TOO_LARGE,
            )
        ext_size = sum(len(k.encode()) + len(v.encode()) for k, v in ext.items())
        if ext_size > MAX_EXT_BYTES:
            raise RequestError(f"extension map of {ext_size} bytes exceeds {MAX_EXT_BYTES}", Code.INVALID_MESSAGE)

    async def _require_user(self, uid: bytes) -> None:
        if uid in self._known_users:
            return
        found = await self._store.run(self._store.repo.existing_accounts, [uid])
        if uid not in found:
            raise RequestError("no such user", Code.NO_SUCH_USER)
        self._known_users.add(uid)

    async def send(
        self,
        sender: Identity,
        recipient: str,
        client_id: str,
        kind: int,
        body: bytes,
        ext: dict[str, str] | None = None,
    ) -> SendResult:
        """Store a 1:1 message and deliver it; a retry with the same client_id is a no-op."""
        ext = dict(ext or {})
        self._validate(client_id, kind, body, ext)
        recipient = ids.normalize_name(recipient)
        await self._require_user(ids.user_id(self._indexer, recipient))
        pending = self._prepare(sender, recipient, client_id, kind, body, ext)
        try:
            self._send_q.send_nowait(pending)
        except trio.ClosedResourceError:
            raise TimpyError("the node is shutting down; send again to another node", Code.UNAVAILABLE) from None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _prepare(
        self, sender: Identity, recipient: str, client_id: str, kind: int, body: bytes, ext: dict[str, str]
    ) -> _Pending:
        """A validated send, ready for the writer (``recipient`` normalized)."""
        rid = ids.user_id(self._indexer, recipient)
        conv = ids.direct_conversation(self._indexer, sender.user_id, rid)
        members = (sender.user_id,) if rid == sender.user_id else (sender.user_id, rid)
        return _Pending(
            NewMessage(
                conv_id=conv,
                members=members,
                sender_id=sender.user_id,
                dedup=ids.dedup_index(self._indexer, sender.user_id, client_id),
                created_ms=self._now(),
                content=pack_content(client_id, sender.name, recipient, kind, body, ext),
            ),
            ids.conversation_text(conv),
            trio.Event(),
        )

    # --- reading --------------------------------------------------------

    async def history(
        self,
        who: Identity,
        conversation: str,
        peer: str,
        before_seq: int,
        after_seq: int | None,
        limit: int,
    ) -> tuple[str, list[ChatMessage], bool]:
        if peer:
            pid = ids.user_id(self._indexer, peer)
            conv = ids.direct_conversation(self._indexer, who.user_id, pid)
        elif conversation:
            conv = ids.parse_conversation(conversation)
        else:
            raise RequestError("a history request names a conversation or a peer", Code.BAD_REQUEST)
        if limit <= 0 or limit > self._limits.history_page_max:
            limit = self._limits.history_page_max
        text = ids.conversation_text(conv)
        if not await self._store.run(self._store.repo.is_member, conv, who.user_id):
            if peer:  # a conversation that has no message yet
                return text, [], False
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        rows, more = await self._store.run(
            self._store.repo.read_history, conv, max(0, before_seq), None if after_seq is None else max(0, after_seq), limit
        )
        return text, [_message(r) for r in rows], more

    async def open_terminal(self, terminal: LiveTerminal) -> int:
        return await self._store.run(
            self._store.repo.open_terminal, terminal.user_id, terminal.device_id, self._now()
        )

    async def sync(self, terminal: LiveTerminal, cursor: int) -> tuple[int, int]:
        """Send the terminal everything after ``cursor``, then make it live.

        Returns the last position sent and how many deliveries were sent.
        """
        terminal.begin_sync()
        last, count, page = cursor, 0, self._limits.sync_page
        while True:
            entries = await self._store.run(self._store.repo.read_inbox, terminal.user_id, last, page)
            for entry in entries:
                await terminal.link.push(Delivery(entry.pos, _message(entry.message)))
                last = entry.pos
                count += 1
            if len(entries) < page and terminal.finish_sync(last):
                return last, count

    def acknowledge(self, terminal: LiveTerminal, pos: int) -> None:
        """The terminal has everything up to ``pos``; stored with the next write batch."""
        key = (terminal.user_id, terminal.device_id)
        if pos > self._cursors.get(key, 0):
            self._cursors[key] = pos
        if not self._cursor_flush_queued:
            try:
                self._send_q.send_nowait(_FLUSH_CURSORS)
                self._cursor_flush_queued = True
            except trio.ClosedResourceError:
                pass  # shutting down: the writer stores pending cursors before it stops


def _message(row: StoredMessage) -> ChatMessage:
    return unpack_content(ids.conversation_text(row.conv_id), row.seq, row.created_ms, row.content)
