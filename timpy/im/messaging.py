"""1:1 messaging: send, history, offline sync and delivery acknowledgements.

Every conversation and every user has an owner node (``Peers``). A send goes
to its conversation's owner; all appends an owner makes go through its one
writer task. The writer takes every send that is waiting, stores the lot in
one transaction (group commit), copies the rows to the keys' other replicas
and waits for the write quorum, and only then pushes to live terminals and
acknowledges, in commit order. So sequences are gap-free, an acknowledged
message is durable, and pushes reach each terminal in sequence order.

A member whose user another node owns gets the message through that node's
writer (``inbox.append``), which numbers it in the user's inbox, replicates
it, and pushes it to the user's terminals wherever they are (``Routes``).
The sender is acknowledged once every member's inbox has it. On a standalone
node every key is local and all of this is one transaction.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from timpy.cluster.rpc import Call
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, StorageError, TimpyError
from timpy.im import ids, kinds
from timpy.im.accounts import RESERVED_NAMES, Identity
from timpy.im.peers import Peers
from timpy.im.ratelimit import TokenBucket
from timpy.im.replication import Replicator
from timpy.im.routes import Routes
from timpy.im.terminals import LiveTerminal, TerminalRegistry
from timpy.store.digest import row_stamp
from timpy.store.repository import (
    Copies,
    InboxItem,
    NewMessage,
    Store,
    StoredMessage,
    Written,
)
from timpy.wire.messages import (
    KIND_BURNED,
    KIND_CUSTOM_MIN,
    KIND_DELETED,
    KIND_EDIT,
    KIND_NORMAL,
    KIND_RECALL,
    KNOWN_KINDS,
    ChatMessage,
    Delivery,
    SendResult,
    pack_content,
    unpack_content,
)

MAX_EXT_BYTES = 4096
GROUP_PREFIX = "#"  # a group message's recipient: "#" and the group id (no user name starts with "#")
MAX_BATCH = 512


_FLUSH_CURSORS = None  # queue marker: store acknowledged cursors, nothing to append


SEND_ATTEMPTS = 3  # tries at a conversation's owner while the ring is changing
REATTACH_ATTEMPTS = 15  # tries to record a live terminal with its user's new owner (about 25 s)


@dataclass(eq=False)
class _Pending:
    """A new message, at its conversation's owner."""

    new: NewMessage
    conversation: str
    done: trio.Event
    result: SendResult | None = None
    error: TimpyError | None = None
    fanout: list[Call] | None = None  # inbox appends at other owners, awaited before the ack
    admin: bool = False  # the sender is an admin of the group (may recall others' messages)
    kind: int = KIND_NORMAL
    ext: dict[str, str] | None = None
    sender: str = ""
    direct: bool = False  # a 1:1 message (the roster's blocks apply)

    def __post_init__(self) -> None:
        _v, _cid, self.sender, recipient, self.kind, _body, self.ext = msgpack.unpackb(self.new.content, raw=False)
        self.direct = not recipient.startswith(GROUP_PREFIX)


@dataclass(eq=False)
class _PendingInbox:
    """An inbox entry at the user's owner, for a message numbered elsewhere."""

    item: InboxItem
    conversation: str
    done: trio.Event
    pos: int = 0
    error: TimpyError | None = None


class SendTicket:
    """A 1:1 send under way: ``wait()`` for its result, or ``now()`` when
    the writer has settled it already (no task switch for the common case)."""

    __slots__ = ("_pending", "_wait")

    def __init__(self, wait: Callable[[], Awaitable[SendResult]], pending: _Pending | None = None) -> None:
        self._wait = wait
        self._pending = pending

    def now(self) -> SendResult | None:
        """The result if it is known without waiting (raises the send's error); else None."""
        p = self._pending
        if p is None or not p.done.is_set() or p.fanout:
            return None
        if p.error is not None:
            if p.error.code == Code.UNAVAILABLE:
                return None  # ``wait`` tries again
            raise p.error
        return p.result

    async def wait(self) -> SendResult:
        return await self._wait()


class Messenger:
    def __init__(
        self,
        store: Store,
        indexer: BlindIndexer,
        registry: TerminalRegistry,
        limits: Limits,
        clock_ms: Callable[[], int],
        peers: Peers | None = None,
        replicator: Replicator | None = None,
        routes: Routes | None = None,
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._registry = registry
        self._limits = limits
        self._now = clock_ms
        self._peers = peers or Peers.standalone("local")
        self._cluster = self._peers.rpc is not None
        self._replicator = replicator or Replicator(store, self._peers)
        self.routes = routes or Routes(self._peers, registry)
        self.routes.on_resend = self._reattach_owned_by
        self._replicator.restore_inbox_entry = self.restore_inbox_entry
        self._send_q, self._recv_q = trio.open_memory_channel[_Pending | _PendingInbox | None](math.inf)
        self._known_users: set[bytes] = set()
        self._looking_up: dict[bytes, trio.Event] = {}  # users whose existence is being looked up
        self._peer_ids: dict[tuple[bytes, str], tuple[str, bytes, bytes, str]] = {}  # see _peer_of
        # Acknowledged positions not yet stored; written with the next batch.
        self._cursors: dict[tuple[bytes, bytes], int] = {}
        self._cursor_flush_queued = False
        self._background: trio.Nursery | None = None
        self.stored_count = 0  # messages stored by this node since it started
        self.fanout_requests = 0  # inbox.append requests sent to other nodes (one per node per message)
        self.records: Any = None  # the node's Records (roster blocks), set when it is built
        self._user_buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._register()

    def check_user_rate(self, user_id: bytes, now: float) -> None:
        """Messages per user on this node (``user_message_rate``); raises RATE_LIMITED."""
        bucket = self._user_buckets.get(user_id)
        if bucket is None:
            bucket = TokenBucket(self._limits.user_message_rate, self._limits.user_message_burst, now)
            self._user_buckets[user_id] = bucket
            while len(self._user_buckets) > 100_000:
                self._user_buckets.popitem(last=False)
        self._user_buckets.move_to_end(user_id)
        if not bucket.take(now):
            raise RequestError(
                f"more than {self._limits.user_message_rate:g} messages per second from this user; slow down",
                Code.RATE_LIMITED,
            )

    def spawn(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background (notifications); dropped while
        the node starts or stops (then False). Best effort: a refusal (say, no
        majority reachable) is logged, never fatal to the node."""
        if self._background is None:
            return False
        self._background.start_soon(_best_effort, fn, *args)
        return True

    # --- the writer -----------------------------------------------------

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store and deliver queued work until ``close`` is called and the queue is empty."""
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

    async def run_background(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the resyncs of terminals that missed a push, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            self.ask_for_terminals(self._peers.placement.members)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._background = None  # closing to new arrivals: spawn drops from now on

    async def _write(self, queued: list[_Pending | _PendingInbox | None], with_cursors: bool = True) -> None:
        news = [p for p in queued if isinstance(p, _Pending)]
        inbox = [p for p in queued if isinstance(p, _PendingInbox)]
        if news:
            news = await self._screen(news)
        cursors: dict[tuple[bytes, bytes], int] = {}
        if with_cursors:
            cursors, self._cursors = self._cursors, {}
            self._cursor_flush_queued = False
        local_users: frozenset[bytes] | None = None
        # A cluster of one holds every replica of every key: there is nothing
        # to catch up from, nobody to copy to and no other inbox to ask.
        replicated = self._cluster and not self._peers.placement.single
        try:
            if self._cluster:
                if replicated:
                    await self._catch_up(news, inbox)
                else:
                    await self._peers.await_write()  # a ring of one still needs its lease (a node not yet joined has none)
                local_users = frozenset(
                    u for p in news for u in p.new.members if not replicated or self._peers.is_local(u)
                )
            written: Written = await self._store.run(
                self._store.repo.write_batch, [p.new for p in news], [p.item for p in inbox], cursors, local_users,
                row_stamp(self._peers.epoch_number, self._now()),  # docs/consistency.md, "Epochs on rows"
            )
        except TimpyError as exc:
            for key, pos in cursors.items():  # keep them for the next try
                self._cursors[key] = max(pos, self._cursors.get(key, 0))
            items = [*news, *inbox]
            # One request's error must not fail the others, and a storage
            # backend that is down must fail only the requests that need it:
            # store them one by one, cursors apart.
            if (isinstance(exc, RequestError) and len(items) > 1) or (
                isinstance(exc, StorageError) and (len(items) > 1 or cursors)
            ):
                for p in items:
                    await self._write([p], with_cursors=False)
                return
            self._fail(items, exc)
            return
        if replicated:
            try:
                await self._replicate(news, inbox, written)
            except TimpyError as exc:
                self._fail([*news, *inbox], exc)
                return
        for p, appended in zip(news, written.appended, strict=True):
            message = unpack_content(p.conversation, appended.seq, appended.created_ms, appended.content)
            if not appended.duplicate:
                self.stored_count += 1
            for user_id, pos in appended.inbox.items():
                self.routes.push(user_id, Delivery(pos, message), appended.content, appended.created_ms)
            if replicated:
                p.fanout = self._fan_out(p.new, appended.seq, appended.sealed, written.epoch)
            p.result = SendResult(message, appended.duplicate)
            p.done.set()
        for p, placed in zip(inbox, written.placed, strict=True):
            if placed.new:
                it = p.item
                content = self._store.repo.open_sealed_message(it.conv_id, it.seq, it.sealed)
                message = unpack_content(p.conversation, it.seq, it.created_ms, content)
                self.routes.push(it.user_id, Delivery(placed.pos, message), content, it.created_ms)
            p.pos = placed.pos
            p.done.set()

    async def _screen(self, news: list[_Pending]) -> list[_Pending]:
        """Refuse, in queue order, what the rules that need stored state refuse:
        1:1 messages to a user who blocked the sender, and recalls and edits
        that may not act on their target."""
        refused: set[int] = set()
        direct = [p for p in news if p.direct and len(p.new.members) == 2]
        if direct and self.records is not None:
            try:
                pairs = await self.records.get_many(list({p.new.conv_id for p in direct}), "pair")
            except TimpyError as exc:
                self._fail(direct, exc)
                refused |= {id(p) for p in direct}
                pairs = {}
            for p in direct:
                pair = pairs.get(p.new.conv_id)
                if pair and any(bytes(blocked) == p.new.sender_id for _, blocked in pair["blocked_ids"]):
                    self._fail([p], RequestError("this user does not accept your messages", Code.BLOCKED))
                    refused.add(id(p))
        for p in news:
            if p.kind in (KIND_RECALL, KIND_EDIT) and id(p) not in refused:
                try:
                    target_seq = kinds.target_of(p.kind, p.ext or {})
                    row = await self._store.run(self._store.repo.get_message, p.new.conv_id, target_seq)
                    target = None
                    if row is not None:
                        target = self._message(p.conversation, row.seq, row.created_ms, row.content)
                    kinds.check_acting(
                        p.kind, p.sender, target, self._now(), int(self._limits.recall_window * 1000), p.admin
                    )
                except TimpyError as exc:
                    self._fail([p], exc)
                    refused.add(id(p))
        return [p for p in news if id(p) not in refused] if refused else news

    @staticmethod
    def _message(conversation: str, seq: int, created_ms: int, content: bytes) -> ChatMessage:
        """A stored message for a reader: a placeholder when it was recalled or burned."""
        if not content:
            return kinds.deleted_placeholder(conversation, seq, created_ms)
        return unpack_content(conversation, seq, created_ms, content)

    @staticmethod
    def _fail(pendings: list[_Pending | _PendingInbox], exc: TimpyError) -> None:
        for p in pendings:
            p.error = exc
            p.done.set()

    async def _catch_up(self, news: list[_Pending], inbox: list[_PendingInbox]) -> None:
        """Before writing keys this node took over, pull what their replicas have."""
        keys = {("conv", p.new.conv_id) for p in news}
        keys |= {("user", u) for p in news for u in p.new.members if self._peers.is_local(u)}
        keys |= {("user", p.item.user_id) for p in inbox}
        await self._peers.await_write()  # no lease (no majority): refuse before anything is stored
        failed: list[TimpyError] = []

        async def ensure(kind: str, key: bytes) -> None:
            try:
                await self._replicator.ensure(kind, key)
            except TimpyError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for kind, key in keys:
                nursery.start_soon(ensure, kind, key)
        if failed:
            raise failed[0]  # a key's copies out of reach fails the batch, which is then stored request by request

    async def _replicate(self, news: list[_Pending], inbox: list[_PendingInbox], written: Written) -> None:
        """Copy the batch's rows to each key's other replicas; wait for the write quorum."""
        placement = self._peers.placement
        me = self._peers.self_id
        copies: dict[str, Copies] = {}
        groups: dict[bytes, tuple[frozenset[str], int]] = {}

        def add(key: bytes, fill: Callable[[Copies], None]) -> None:
            nodes = frozenset(placement.replicas(key)) - {me}
            groups[key] = (nodes, placement.acks_needed(key))
            for node in nodes:
                fill(copies.setdefault(node, Copies()))

        for p, a in zip(news, written.appended, strict=True):
            n = p.new
            row = (n.conv_id, a.seq, n.dedup, a.created_ms, a.sealed, written.epoch)
            add(n.conv_id, lambda c, row=row: c.messages.append(row))
            if a.seq == 1 or a.duplicate:
                members = (n.conv_id, sorted(set(n.members)))
                add(n.conv_id, lambda c, members=members: c.conversations.append(members))
            for user_id, pos in a.inbox.items():
                entry = (user_id, pos, n.conv_id, a.seq, written.epoch)
                add(user_id, lambda c, entry=entry, row=row: (c.inbox.append(entry), c.messages.append(row)))
        for p, placed in zip(inbox, written.placed, strict=True):
            it = p.item
            row = (it.conv_id, it.seq, it.dedup, it.created_ms, it.sealed, it.epoch or written.epoch)
            entry = (it.user_id, placed.pos, it.conv_id, it.seq, written.epoch)
            add(it.user_id, lambda c, entry=entry, row=row: (c.inbox.append(entry), c.messages.append(row)))
        epoch = self._peers.epoch_number
        try:
            await self._replicator.replicate(copies, groups.values())
        except TimpyError:
            # Not acknowledged: take back what this write stored, here and wherever its copies went.
            undo_rows = [(p.new.conv_id, a.seq, p.new.dedup) for p, a in zip(news, written.appended, strict=True)
                         if not a.duplicate]
            undo_inbox = [(u, pos, p.new.conv_id, a.seq) for p, a in zip(news, written.appended, strict=True)
                          for u, pos in a.inbox.items()]
            undo_inbox += [(p.item.user_id, pl.pos, p.item.conv_id, p.item.seq)
                           for p, pl in zip(inbox, written.placed, strict=True) if pl.new]
            await self._replicator.undo(epoch, undo_rows, undo_inbox)
            raise

    def _fan_out(self, new: NewMessage, seq: int, sealed: bytes, epoch: int = 0) -> list[Call]:
        """Ask the owners of the members' users (other nodes) to put the
        message in their inboxes: one request per node, however many of the
        members it owns; sent now, in commit order."""
        by_node: dict[str, list[bytes]] = {}
        for user_id in sorted(set(new.members)):
            owner = self._peers.owner(user_id)
            if owner != self._peers.self_id:
                by_node.setdefault(owner, []).append(user_id)
        self.fanout_requests += len(by_node)
        return [
            self._peers.start_call(
                node, "inbox.append", users, new.conv_id, seq, new.dedup, new.created_ms, sealed, epoch
            )
            for node, users in by_node.items()
        ]

    def queue_depth(self) -> int:
        """Appends waiting for the writer."""
        return self._send_q.statistics().current_buffer_used

    def close(self) -> None:
        """No new sends; the writer finishes what is queued, then returns."""
        self._send_q.close()

    def _enqueue(self, pending: _Pending | _PendingInbox) -> None:
        try:
            self._send_q.send_nowait(pending)
        except trio.ClosedResourceError:
            raise TimpyError("the node is shutting down; send again to another node", Code.UNAVAILABLE) from None

    # --- sending --------------------------------------------------------

    def _validate(self, client_id: str, kind: int, body: bytes, ext: dict[str, str]) -> None:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= ids.MAX_CLIENT_ID:
            raise RequestError(
                f"a message needs a client_id of 1 to {ids.MAX_CLIENT_ID} characters", Code.INVALID_MESSAGE
            )
        if not isinstance(kind, int) or (kind not in KNOWN_KINDS and kind < KIND_CUSTOM_MIN):
            if kind in (KIND_BURNED, KIND_DELETED):
                raise RequestError(f"message kind {kind} is made by the node, not sent", Code.INVALID_MESSAGE)
            raise RequestError(f"unknown message kind {kind}", Code.INVALID_MESSAGE)
        if kind in (KIND_RECALL, KIND_EDIT):
            kinds.target_of(kind, ext)
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
        # One lookup per user at a time: a flood of first messages to a user
        # waits for the same answer instead of queueing a lookup each.
        looking = self._looking_up.get(uid)
        if looking is not None:
            await looking.wait()
            if uid in self._known_users:
                return
        event = trio.Event()
        self._looking_up.setdefault(uid, event)
        try:
            if not await self.user_exists(uid):
                raise RequestError("no such user", Code.NO_SUCH_USER)
            self._known_users.add(uid)
        finally:
            if self._looking_up.get(uid) is event:
                del self._looking_up[uid]
            event.set()

    async def peer_of(self, who: Identity, name: str) -> tuple[str, bytes, bytes]:
        """Another user, for a 1:1 operation: (normalized name, user id, the
        key of the two users' conversation and relation); NO_SUCH_USER if absent."""
        peer = ids.normalize_name(name)
        pid = ids.user_id(self._indexer, peer)
        if peer in RESERVED_NAMES or not await self.user_exists(pid):
            raise RequestError(f"no such user: {peer}", Code.NO_SUCH_USER)
        return peer, pid, ids.direct_conversation(self._indexer, who.user_id, pid)

    async def user_exists(self, uid: bytes) -> bool:
        owner = self._peers.owner(uid)
        if owner == self._peers.self_id or not self._cluster:
            return await self._exists_here(uid)
        return bool(await self._peers.call(owner, "acct.exists", uid))

    async def _exists_here(self, uid: bytes) -> bool:
        await self._replicator.ensure("user", uid)
        return uid in await self._store.run(self._store.repo.existing_accounts, [uid])

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
        return await (await self.start_send(sender, recipient, client_id, kind, body, ext)).wait()

    async def start_send(
        self,
        sender: Identity,
        recipient: str,
        client_id: str,
        kind: int,
        body: bytes,
        ext: dict[str, str] | None = None,
    ) -> SendTicket:
        """Check a 1:1 send and, when its conversation's owner is this node,
        queue it for the writer now; returns what waits for its result.

        Sends queued one after another are numbered in that order, so a
        connection may have several in flight and its conversation keeps
        their order. (A send to another node's conversation goes out when
        the returned function runs.)"""
        ext = dict(ext or {})
        self._validate(client_id, kind, body, ext)
        if kind == KIND_EDIT:
            ext["at"] = str(self._now())
        peer = self._peer_ids.get((sender.user_id, recipient)) or self._peer_of(sender.user_id, recipient)
        await self._require_user(peer[1])
        new, conversation = self._prepare(sender, peer, client_id, kind, body, ext)
        conv = new.conv_id
        if not self._cluster or self._peers.placement.single or self._peers.owner(conv) == self._peers.self_id:
            pending = _Pending(new, conversation, trio.Event())
            self._enqueue(pending)

            async def result() -> SendResult:
                try:
                    return await self._finish_append(pending)
                except TimpyError as exc:
                    if exc.code != Code.UNAVAILABLE:
                        raise
                # The ring may be changing under us: the same client id makes a retry safe.
                await trio.sleep(0.3)
                return await self._send_at_owner(new, conversation, SEND_ATTEMPTS - 1)

            return SendTicket(result, pending)
        return SendTicket(lambda: self._send_at_owner(new, conversation, SEND_ATTEMPTS))

    def _peer_of(self, sender_id: bytes, recipient: str) -> tuple[str, bytes, bytes, str]:
        """(normalized name, user id, 1:1 conversation id and text) of a
        sender's recipient: keyed hashes, kept for the next send."""
        name = ids.normalize_name(recipient)
        rid = ids.user_id(self._indexer, name)
        conv = ids.direct_conversation(self._indexer, sender_id, rid)
        if len(self._peer_ids) >= 100_000:
            self._peer_ids.clear()
        peer = self._peer_ids[(sender_id, recipient)] = (name, rid, conv, ids.conversation_text(conv))
        return peer

    def _prepare(
        self, sender: Identity, peer: str | tuple[str, bytes, bytes, str], client_id: str, kind: int, body: bytes,
        ext: dict[str, str],
    ) -> tuple[NewMessage, str]:
        """A validated send to ``peer`` (a name, or what ``_peer_of`` gives) and its conversation's text id."""
        if isinstance(peer, str):
            peer = self._peer_of(sender.user_id, peer)
        recipient, rid, conv, conversation = peer
        new = NewMessage(
            conv_id=conv,
            members=(sender.user_id,) if rid == sender.user_id else (sender.user_id, rid),
            sender_id=sender.user_id,
            dedup=ids.dedup_index(self._indexer, sender.user_id, client_id),
            created_ms=self._now(),
            content=pack_content(client_id, sender.name, recipient, kind, body, ext),
        )
        return new, conversation

    async def _send_at_owner(self, new: NewMessage, conversation: str, attempts: int) -> SendResult:
        for attempt in range(attempts):
            owner = self._peers.owner(new.conv_id)
            try:
                if owner == self._peers.self_id or not self._cluster:
                    return await self._append_here(new, conversation)
                raw = await self._peers.call(owner, "conv.append", *_pack_new(new))
                seq, created_ms, duplicate, content = raw
                return SendResult(unpack_content(conversation, seq, created_ms, bytes(content)), bool(duplicate))
            except TimpyError as exc:
                # The ring may be changing under us: the same client id makes a retry safe.
                if exc.code != Code.UNAVAILABLE or attempt == attempts - 1:
                    raise
                await trio.sleep(0.3 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def append_group(
        self, sender: Identity, gid: bytes, members: tuple[bytes, ...], client_id: str, kind: int, body: bytes,
        ext: dict[str, str], admin: bool = False,
    ) -> SendResult:
        """Store a message to a group (at the group's owner, its rules checked):
        once, numbered in the group's conversation, into every member's inbox."""
        ext = dict(ext)
        self._validate(client_id, kind, body, ext)
        if kind == KIND_EDIT:
            ext["at"] = str(self._now())
        text = ids.conversation_text(gid)
        new = NewMessage(
            conv_id=gid,
            members=members,
            sender_id=sender.user_id,
            dedup=ids.dedup_index(self._indexer, sender.user_id, client_id),
            created_ms=self._now(),
            content=pack_content(client_id, sender.name, GROUP_PREFIX + text, kind, body, ext),
        )
        return await self._append_here(new, text, admin)

    @staticmethod
    def result_to_wire(r: SendResult) -> list:
        m = r.message
        return [m.seq, m.server_time, r.duplicate, pack_content(m.client_id, m.sender, m.recipient, m.kind, m.body, m.ext)]

    @staticmethod
    def result_from_wire(conversation: str, raw: list) -> SendResult:
        seq, created_ms, duplicate, content = raw
        return SendResult(unpack_content(conversation, seq, created_ms, bytes(content)), bool(duplicate))

    async def append_here(self, new: NewMessage, conversation: str) -> SendResult:
        """At the conversation's owner: store a message the node makes (BURNED)."""
        return await self._append_here(new, conversation)

    async def _append_here(self, new: NewMessage, conversation: str, admin: bool = False) -> SendResult:
        pending = _Pending(new, conversation, trio.Event(), admin=admin)
        self._enqueue(pending)
        return await self._finish_append(pending)

    async def _finish_append(self, pending: _Pending) -> SendResult:
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        for call in pending.fanout or ():
            try:
                await call.result()
            except TimpyError as exc:
                raise TimpyError(
                    f"the message is stored but a recipient's inbox did not confirm it ({exc.text}); send it again",
                    Code.UNAVAILABLE,
                ) from None
        assert pending.result is not None
        return pending.result

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
        args = (conv, who.user_id, max(0, before_seq), -1 if after_seq is None else max(0, after_seq), limit)
        member, rows, more = await self._read_history(conv, args)
        if not member:
            if peer:  # a conversation that has no message yet
                return text, [], False
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        shown = [
            unpack_content(text, seq, ms, bytes(content)) for seq, ms, content in rows if content  # not recalled or burned
        ]
        return text, [m for m in shown if m.kind not in kinds.ACTING], bool(more)

    async def _read_history(self, conv: bytes, args: tuple) -> tuple[bool, list, bool]:
        """From the conversation's owner; if it does not answer, from another
        replica that has the conversation (which may lack the newest messages)."""
        replicas = [self._peers.owner(conv)] if not self._cluster else self._peers.placement.replicas(conv)
        last: TimpyError | None = None
        for i, node in enumerate(replicas):
            try:
                if node == self._peers.self_id or not self._cluster:
                    return await self._history_here(*args, owner=i == 0)
                return tuple(await self._peers.call(node, "conv.history", *args, i == 0))  # type: ignore[return-value]
            except TimpyError as exc:
                if exc.code != Code.UNAVAILABLE:
                    raise
                last = exc
        assert last is not None
        raise last

    async def _history_here(
        self, conv: bytes, user_id: bytes, before_seq: int, after_seq: int, limit: int, owner: bool = True
    ) -> tuple[bool, list[tuple[int, int, bytes]], bool]:
        if owner:
            await self._replicator.ensure("conv", conv)
        if not await self._store.run(self._store.repo.is_member, conv, user_id):
            return False, [], False
        rows, more = await self._store.run(
            self._store.repo.read_history, conv, before_seq, None if after_seq < 0 else after_seq, limit
        )
        return True, [(r.seq, r.created_ms, r.content) for r in rows], more

    async def open_terminal(self, terminal: LiveTerminal) -> int:
        """Record the terminal with its user's owner; returns its delivery cursor."""
        terminal.on_gap = self._resync
        owner = self._peers.owner(terminal.user_id)
        if owner == self._peers.self_id or not self._cluster:
            return await self._open_terminal_here(
                terminal.user_id, terminal.device_id, self._peers.self_id, terminal.kind
            )
        return int(
            await self._peers.call(
                owner, "term.open", terminal.user_id, terminal.device_id, self._peers.self_id, terminal.kind
            )
        )

    async def _open_terminal_here(self, user_id: bytes, device_id: bytes, node_id: str, kind: str = "other") -> int:
        await self._replicator.ensure("user", user_id)
        self.routes.check(user_id, device_id, kind)  # a refused login changes nothing
        cursor = await self._store.run(self._store.repo.open_terminal, user_id, device_id, self._now())
        self.routes.attach(user_id, device_id, node_id, kind)
        return cursor

    def close_terminal(self, terminal: LiveTerminal) -> None:
        self._registry.detach(terminal)
        if self._registry.find(terminal.user_id, terminal.device_id) is None:
            self.routes.detach(terminal.user_id, terminal.device_id)

    def reattach_terminals(self) -> None:
        """The ring changed: record every terminal here with its user's
        (possibly new) owner, and sync each from where it is, in case a push
        was sent while the owner had no record of it."""
        if self._background is None:
            return
        for terminal in self._registry.all():
            self._background.start_soon(self._reattach, terminal)
        self.ask_for_terminals(self._peers.placement.members)

    def ask_for_terminals(self, members: Iterable[str]) -> None:
        """Ask each member met for the first time since this node started to
        record with it the terminals of the users it owns (``Routes``)."""
        if self._background is None:
            return
        for node in self.routes.not_yet_asked(members):
            self._background.start_soon(self.routes.ask_for_terminals, node)

    async def restore_inbox_entry(self, item: InboxItem) -> None:
        """Put a message back in a user's inbox through its owner's writer (at
        the head, unless it is there already): repair found it had lost its
        inbox slot to another message."""
        owner = self._peers.owner(item.user_id)
        if owner == self._peers.self_id or not self._cluster:
            pending = _PendingInbox(item, ids.conversation_text(item.conv_id), trio.Event())
            self._enqueue(pending)
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return
        await self._peers.call(
            owner, "inbox.append", [item.user_id], item.conv_id, item.seq, item.dedup, item.created_ms, item.sealed,
            item.epoch,
        )

    def _reattach_owned_by(self, owner: str) -> int:
        """``owner`` (re)started: record with it the terminals here whose users it owns."""
        if self._background is None:
            return 0
        mine = [t for t in self._registry.all() if self._peers.owner(t.user_id) == owner]
        for terminal in mine:
            self._background.start_soon(self._reattach, terminal)
        return len(mine)

    async def _reattach(self, terminal: LiveTerminal) -> None:
        # The new owner may not hold its lease or know the new ring yet (an
        # owner that was declared dead and came back is both, for a moment):
        # try again while the terminal lives, rather than wait for a ring
        # change that may never come (issue 15, a live terminal keeps receiving).
        for attempt in range(REATTACH_ATTEMPTS):
            try:
                await self.open_terminal(terminal)
                break
            except TimpyError:
                if attempt == REATTACH_ATTEMPTS - 1:
                    return  # the next ring change tries again
                await trio.sleep(min(0.2 * 2**attempt, 2.0))
                if self._registry.find(terminal.user_id, terminal.device_id) is not terminal:
                    return  # closed meanwhile
        if not terminal.syncing:
            terminal.begin_sync()
            self._resync(terminal)

    def _resync(self, terminal: LiveTerminal) -> None:
        if self._background is not None:
            self._background.start_soon(self._run_resync, terminal)

    async def _run_resync(self, terminal: LiveTerminal) -> None:
        try:
            await self.sync(terminal, terminal.last_pos)
        except TimpyError as exc:
            terminal.link.close(f"could not catch up on missed messages ({exc.text}); reconnect", exc.code)

    async def _read_inbox(self, user_id: bytes, after: int, limit: int) -> list[tuple[int, bytes, int, int, bytes]]:
        owner = self._peers.owner(user_id)
        if owner == self._peers.self_id or not self._cluster:
            return await self._inbox_here(user_id, after, limit)
        return await self._peers.call(owner, "inbox.read", user_id, after, limit)

    async def _inbox_here(self, user_id: bytes, after: int, limit: int) -> list[tuple[int, bytes, int, int, bytes]]:
        await self._replicator.ensure("user", user_id)
        entries = await self._store.run(self._store.repo.read_inbox, user_id, int(after), int(limit))
        m: StoredMessage
        return [(e.pos, (m := e.message).conv_id, m.seq, m.created_ms, m.content) for e in entries]

    async def sync(self, terminal: LiveTerminal, cursor: int) -> tuple[int, int]:
        """Send the terminal everything after ``cursor``, then make it live.

        Returns the last position sent and how many deliveries were sent.
        """
        terminal.begin_sync()
        last, count, page = cursor, 0, self._limits.sync_page
        for _ in range(100_000):  # bounded: each round reads a page or goes live
            entries = await self._read_inbox(terminal.user_id, last, page)
            for pos, conv_id, seq, created_ms, content in entries:
                message = self._message(ids.conversation_text(bytes(conv_id)), seq, created_ms, bytes(content))
                await terminal.link.push(Delivery(pos, message))
                last = pos
                count += 1
            if len(entries) < page and terminal.finish_sync(last):
                break
        return last, count

    def acknowledge(self, terminal: LiveTerminal, pos: int) -> None:
        """The terminal has everything up to ``pos``; stored with the owner's next write batch."""
        owner = self._peers.owner(terminal.user_id)
        if owner == self._peers.self_id or not self._cluster:
            self._acknowledge_here(terminal.user_id, terminal.device_id, pos)
        else:
            self._peers.notify(owner, "term.ack", terminal.user_id, terminal.device_id, pos)

    def _acknowledge_here(self, user_id: bytes, device_id: bytes, pos: int) -> None:
        key = (user_id, device_id)
        if pos > self._cursors.get(key, 0):
            self._cursors[key] = pos
        if not self._cursor_flush_queued:
            try:
                self._send_q.send_nowait(_FLUSH_CURSORS)
                self._cursor_flush_queued = True
            except trio.ClosedResourceError:
                pass  # shutting down: the writer stores pending cursors before it stops

    # --- what other nodes ask of this one ----------------------------------

    def _require_owner(self, key: bytes, what: str) -> None:
        if not self._peers.is_local(key):
            raise TimpyError(f"this node does not own that {what} (the cluster is changing); retry", Code.UNAVAILABLE)

    def _register(self) -> None:
        rpc = self._peers.rpc
        if rpc is None:
            return

        def conv_append(conv_id, members, sender_id, dedup, created_ms, content):  # noqa: ANN001, ANN202
            new = NewMessage(bytes(conv_id), tuple(bytes(m) for m in members), bytes(sender_id), bytes(dedup),
                             int(created_ms), bytes(content))
            self._require_owner(new.conv_id, "conversation")
            pending = _Pending(new, ids.conversation_text(new.conv_id), trio.Event())
            self._enqueue(pending)  # now, so one sender's requests keep their order

            async def answer() -> list:
                r = await self._finish_append(pending)
                m = r.message
                return [m.seq, m.server_time, r.duplicate, pack_content(m.client_id, m.sender, m.recipient, m.kind, m.body, m.ext)]

            return answer()

        def inbox_append(user_ids, conv_id, seq, dedup, created_ms, sealed, epoch=0):  # noqa: ANN001, ANN202
            pendings = []
            for user_id in user_ids:
                item = InboxItem(
                    bytes(user_id), bytes(conv_id), int(seq), bytes(dedup), int(created_ms), bytes(sealed), int(epoch)
                )
                self._require_owner(item.user_id, "user")
                pendings.append(_PendingInbox(item, ids.conversation_text(item.conv_id), trio.Event()))
            for pending in pendings:
                self._enqueue(pending)  # now, together: one writer batch, in order

            async def answer() -> list[int]:
                for pending in pendings:
                    await pending.done.wait()
                    if pending.error is not None:
                        raise pending.error
                return [p.pos for p in pendings]

            return answer()

        async def history(conv_id, user_id, before, after, limit, as_owner=True):  # noqa: ANN001, ANN202
            if as_owner:
                self._require_owner(bytes(conv_id), "conversation")
            elif not self._peers.placement.holds(bytes(conv_id)):
                raise TimpyError("this node holds no copy of that conversation", Code.UNAVAILABLE)
            return list(
                await self._history_here(
                    bytes(conv_id), bytes(user_id), int(before), int(after), int(limit), bool(as_owner)
                )
            )

        async def inbox_read(user_id, after, limit):  # noqa: ANN001, ANN202
            self._require_owner(bytes(user_id), "user")
            return [list(e) for e in await self._inbox_here(bytes(user_id), int(after), int(limit))]

        async def term_open(user_id, device_id, node_id, kind="other"):  # noqa: ANN001, ANN202
            self._require_owner(bytes(user_id), "user")
            return await self._open_terminal_here(bytes(user_id), bytes(device_id), str(node_id), str(kind))

        def term_ack(user_id, device_id, pos):  # noqa: ANN001, ANN202
            self._acknowledge_here(bytes(user_id), bytes(device_id), int(pos))

        async def exists(user_id):  # noqa: ANN001, ANN202
            self._require_owner(bytes(user_id), "user")
            return await self._exists_here(bytes(user_id))

        rpc.register("conv.append", conv_append)
        rpc.register("inbox.append", inbox_append)
        rpc.register("conv.history", history)
        rpc.register("inbox.read", inbox_read)
        rpc.register("term.open", term_open)
        rpc.register("term.ack", term_ack)
        rpc.register("acct.exists", exists)


async def _best_effort(fn: Callable[..., Any], *args: Any) -> None:
    try:
        await fn(*args)
    except TimpyError as exc:
        logging.getLogger("timpy.messaging").info("background notification dropped: %s", exc.text)


def _pack_new(n: NewMessage) -> list:
    return [n.conv_id, list(n.members), n.sender_id, n.dedup, n.created_ms, n.content]


def _message(row: StoredMessage) -> ChatMessage:
    return unpack_content(ids.conversation_text(row.conv_id), row.seq, row.created_ms, row.content)
