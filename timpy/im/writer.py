"""The write path of a node: one queue, one writer task, group commit.

Every append a node makes (a message at its conversation's owner, an inbox
entry at its user's owner) is queued here. The writer task takes everything
waiting (up to ``MAX_BATCH`` appends, ``MAX_BATCH_BYTES`` of contents and
``MAX_BATCH_ENTRIES`` inbox entries) and, in order:

1. runs the **checks** (``Check``), which may refuse single appends (a block,
   a recall out of its window); the rest of the batch goes on;
2. in a cluster, makes sure this node holds its ownership lease and has
   caught up the keys it took over (``Replicator.ensure``);
3. stores the batch in one transaction (``Repository.write_batch``): numbers
   each conversation gap-free, places inbox entries, stores delivery cursors;
4. copies the rows to the keys' other replicas and waits for the write quorum
   (undone everywhere when the quorum is missed);
5. hands the committed messages to the **listeners** (``Listener``), in
   commit order: pushes to terminals (``timpy.im.delivery``), metrics, the
   webhook events and push notifications (``timpy.im.webhooks``, ``timpy.im.push``);
6. asks the owners of members' users on other nodes to append the message to
   their inboxes (fan-out, ``inbox.append``, one request per node, in commit
   order) and settles each append.

Two hooks run outside the writer task, in the task of the request being
served, because they may wait for other services: **send checks**
(``SendCheck``, ``screen_send``) before a send is queued (a webhook that
approves or rewrites messages: a slow one must not stall the other senders'
batches), and **ack holds** (``AckHold``), awaited in ``finish`` before a
send is acknowledged (what a listener handed off must be durable first:
the webhook outbox).

A message numbered at another node's conversation goes there through
``append_at_owner`` (``conv.append``, served here at the owner).

One writer per node makes sequences gap-free without locks and turns
concurrent sends into one fsync. Features do not reach into this loop: they
``submit`` appends, and hook in through checks and listeners.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import trio

from timpy.cluster import catalog as ops
from timpy.cluster.rpc import Call, NotOwner
from timpy.concurrency import Settled, to_worker
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, StorageError, TimpyError
from timpy.frozen import quick_init
from timpy.im import ids, kinds
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.store.digest import row_stamp
from timpy.store.repository import Store
from timpy.store.rows import Copies, InboxItem, NewMessage, Written
from timpy.store.stamp_floor import StampFloor
from timpy.wire.messages import (
    KIND_BURNED,
    KIND_CUSTOM_MIN,
    KIND_DELETED,
    KIND_EDIT,
    KNOWN_KINDS,
    ChatMessage,
    MessageContent,
    SendResult,
)

log = logging.getLogger("timpy.writer")

# A batch is everything waiting, up to these bounds (the first append always
# goes, whatever its size). Under a flood each batch pays costs of its own
# whatever its size (a wake and a write per connection for the acks and the
# pushes, a search and a notice round, a commit): 4,096 appends a batch
# instead of 512 took the node's CPU per message from 0.44 to 0.32 ms
# (docs/performance.md, "Larger writer batches"). The bytes bound keeps a
# batch's copies to one replica (each message row up to three times: its
# conversation's and its two users' keys) well inside a peer frame
# (``MAX_PEER_FRAME``, 16 MiB); the entries bound keeps a batch of large
# groups' messages to one transaction of bounded size.
MAX_BATCH = 4096  # appends
# A batch copied to replicas waits for them to store it, within the quorum's
# time (``replication.QUORUM_TIMEOUT``), while their own writers are busy:
# such a batch keeps the bound it had.
MAX_REPLICATED_BATCH = 512
MAX_BATCH_BYTES = 4 << 20  # packed contents and sealed copies
MAX_BATCH_ENTRIES = 65_536  # inbox entries (a message has one per member)
SEND_ATTEMPTS = 3  # tries at a conversation's owner while the ring is changing
MAX_EXT_BYTES = 4096
GROUP_PREFIX = "#"  # a group message's recipient: "#" and the group id (no user name starts with "#")

_FLUSH_CURSORS = None  # queue marker: store acknowledged cursors, nothing to append


@dataclass(eq=False)
class Append:
    """A new message at its conversation's owner, waiting for the writer.

    ``content`` is the decoded form of ``new.content``: decoded (or built)
    once, read by the checks and the listeners."""

    new: NewMessage
    content: MessageContent
    conversation: str  # the conversation's text id
    admin: bool = False  # the sender is an admin of the group (may recall others' messages)
    done: Settled = field(default_factory=Settled)
    result: SendResult | None = None
    error: TimpyError | None = None
    fanout: list[Call] | None = None  # inbox appends at other owners, awaited before the ack
    held: bool = False  # ack holds run before the ack (``finish``)

    @property
    def direct(self) -> bool:
        """A 1:1 message (the roster's blocks apply)."""
        return not self.content.recipient.startswith(GROUP_PREFIX)

    def settle(self, error: TimpyError) -> None:
        self.error = error
        self.done.set()


@dataclass(eq=False)
class InboxAppend:
    """An inbox entry at the user's owner, for a message numbered elsewhere."""

    item: InboxItem
    conversation: str
    done: Settled = field(default_factory=Settled)
    pos: int = 0
    error: TimpyError | None = None

    def settle(self, error: TimpyError) -> None:
        self.error = error
        self.done.set()


@quick_init
@dataclass(frozen=True)
class Committed:
    """A message the writer committed, as listeners see it.

    ``numbered_here`` is True at the conversation's owner (the message is
    new), False for the inbox entries a user's owner added for a message
    numbered on another node (the same message seen again, for other users).
    A retried send that was stored already (a duplicate) is not committed
    again and reaches no listener."""

    message: ChatMessage
    content: bytes  # the packed plaintext content (what a push to another node carries)
    inbox: Mapping[bytes, int]  # user id -> inbox position, for the entries this commit made on this node
    numbered_here: bool


class Check(Protocol):
    """Runs in the writer task before the commit, on the appends of one batch
    not refused yet, in queue order. Returns the ones it refuses, each with
    the error its sender gets; the others are stored. A check that raises a
    ``TimpyError`` refuses every append it was given with it. A check may
    await (read records, the store); the batch waits for it."""

    async def __call__(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]: ...


class Listener(Protocol):
    """Runs in the writer task after the commit (and the write quorum), with
    the batch's committed messages in commit order; each message reaches
    each listener once.

    A listener must not block the writer: it is a plain function, it must
    not await, and should take microseconds per message. Work that waits
    (a webhook, an index update) is handed off without waiting: put it on a
    bounded ``trio`` memory channel with ``send_nowait`` drained by the
    listener's own task (counting what it drops when full), or start it with
    ``TaskHost.spawn``. A listener that raises is logged and counted
    (``Writer.listener_failures``); the commit stands, the sends are
    acknowledged and the other listeners still run."""

    def __call__(self, committed: Sequence[Committed]) -> None: ...


class SendCheck(Protocol):
    """Runs where a send is served, before it is queued (outside the writer
    task: it may wait for a remote service), for sends of users (1:1 and
    group). Given the checked message and its conversation's text id, it
    returns the body to store (the same, or rewritten); it raises a
    ``TimpyError`` to refuse the send (nothing is stored)."""

    async def __call__(self, content: MessageContent, conversation: str) -> bytes: ...


class AckHold(Protocol):
    """Runs in ``finish`` (the task waiting for a send's result, not the
    writer task), after the commit and the fan-out, before the send is
    acknowledged: for every settled append, a duplicate included (whose
    first try may have been committed and lost before its hold ran). A
    listener hands waiting work off; a hold waits until it is durable. One
    that raises a ``TimpyError`` fails the ack with UNAVAILABLE: the message
    is stored, and the sender's retry (a duplicate) runs the hold again."""

    async def __call__(self, result: SendResult) -> None: ...


def _weight(work: Append | InboxAppend | None) -> tuple[int, int]:
    """What one queued item adds to a batch: (bytes, inbox entries)."""
    if type(work) is Append:
        return len(work.new.content), len(work.new.members)
    if type(work) is InboxAppend:
        return len(work.item.sealed), 1
    return 0, 0  # stored cursors only


def check_message(limits: Limits, client_id: str, kind: int, body: bytes, ext: dict[str, str]) -> None:
    """What any message must be before it is queued (size, kind, client id, ext); raises INVALID_MESSAGE and kin."""
    if not isinstance(client_id, str) or not 0 < len(client_id) <= ids.MAX_CLIENT_ID:
        raise RequestError(f"a message needs a client_id of 1 to {ids.MAX_CLIENT_ID} characters", Code.INVALID_MESSAGE)
    if not isinstance(kind, int) or (kind not in KNOWN_KINDS and kind < KIND_CUSTOM_MIN):
        if kind in (KIND_BURNED, KIND_DELETED):
            raise RequestError(f"message kind {kind} is made by the node, not sent", Code.INVALID_MESSAGE)
        raise RequestError(f"unknown message kind {kind}", Code.INVALID_MESSAGE)
    if kind in kinds.SENT_ACTING:
        kinds.target_of(kind, ext)
    if not isinstance(body, bytes):
        raise RequestError("a message body is bytes", Code.INVALID_MESSAGE)
    if len(body) > limits.max_body:
        raise RequestError(
            f"message body of {len(body)} bytes exceeds the limit of {limits.max_body}", Code.BODY_TOO_LARGE
        )
    ext_size = sum(len(k.encode()) + len(v.encode()) for k, v in ext.items())
    if ext_size > MAX_EXT_BYTES:
        raise RequestError(f"extension map of {ext_size} bytes exceeds {MAX_EXT_BYTES}", Code.INVALID_MESSAGE)


class Writer:
    def __init__(
        self,
        store: Store,
        peers: Peers,
        replicator: Replicator,
        indexer: BlindIndexer,
        limits: Callable[[], Limits],
        clock_ms: Callable[[], int],
        *,
        checks: Iterable[Check] = (),
        listeners: Iterable[Listener] = (),
        send_checks: Iterable[SendCheck] = (),
        holds: Iterable[AckHold] = (),
        max_batch: int = MAX_BATCH,
        floor: StampFloor | None = None,
        max_bytes: int = MAX_BATCH_BYTES,
        max_entries: int = MAX_BATCH_ENTRIES,
    ) -> None:
        self._store = store
        self._peers = peers
        self._replicator = replicator
        self._indexer = indexer
        self._limits = limits
        self.now_ms = clock_ms
        self.checks: tuple[Check, ...] = tuple(checks)
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self.send_checks: tuple[SendCheck, ...] = tuple(send_checks)
        self.holds: tuple[AckHold, ...] = tuple(holds)
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._cluster = peers.rpc is not None
        self._send_q, self._recv_q = trio.open_memory_channel[Append | InboxAppend | None](math.inf)
        # Acknowledged positions not yet stored; written with the next batch.
        self._cursors: dict[tuple[bytes, bytes], int] = {}
        self._cursor_flush_queued = False
        self.fanout_requests = 0  # inbox.append requests sent to other nodes (one per node per message)
        # Stamps given before a restart are below the floor kept on disk (``timpy.store.stamp_floor``).
        self._floor = floor if floor is not None else StampFloor(None)
        self._last_stamp = self._floor.value  # the newest row stamp this writer gave (``_stamp``), or the floor
        self.listener_failures = 0  # listener calls that raised (logged)
        peers.serve(ops.INBOX_APPEND, self._inbox_here)
        peers.serve(ops.CONV_APPEND, self._append_here)

    # --- hooks ------------------------------------------------------------------

    def add_check(self, check: Check) -> None:
        """Run ``check`` before each commit, after the checks added before it."""
        self.checks = (*self.checks, check)

    def listen(self, listener: Listener) -> None:
        """Hand ``listener`` every commit from now on, after the listeners added before it."""
        self.listeners = (*self.listeners, listener)

    def check_sends(self, check: SendCheck) -> None:
        """Run ``check`` on each user's send before it is queued (``screen_send``), after the ones added before it."""
        self.send_checks = (*self.send_checks, check)

    def hold_acks(self, hold: AckHold) -> None:
        """Await ``hold`` before each send is acknowledged, after the holds added before it."""
        self.holds = (*self.holds, hold)

    # --- what features call --------------------------------------------------

    def prepare(
        self, sender_id: bytes, sender: str, conv_id: bytes, members: tuple[bytes, ...], recipient: str,
        client_id: str, kind: int, body: bytes, ext: dict[str, str] | None,
    ) -> tuple[NewMessage, MessageContent]:
        """A checked new message from ``sender`` to the conversation ``conv_id``
        (``recipient``: a user's name, or ``GROUP_PREFIX`` and the group id)."""
        ext = dict(ext or {})
        check_message(self._limits(), client_id, kind, body, ext)
        now = self.now_ms()
        if kind == KIND_EDIT:
            ext["at"] = str(now)
        content = MessageContent(client_id, sender, recipient, kind, body, ext)
        new = NewMessage(
            conv_id=conv_id, members=members, sender_id=sender_id,
            dedup=ids.dedup_index(self._indexer, sender_id, client_id), created_ms=now, content=content.pack(),
        )
        return new, content

    async def screen_send(
        self, new: NewMessage, content: MessageContent, conversation: str
    ) -> tuple[NewMessage, MessageContent]:
        """Run the send checks on a prepared send (in the caller's task, before
        it is queued); returns the message to queue: the same, or made again
        (and checked again, its size too) with the body a check rewrote."""
        body = content.body
        for check in self.send_checks:
            body = await check(content if body == content.body else replace(content, body=body), conversation)
        if body == content.body:
            return new, content
        return self.prepare(
            new.sender_id, content.sender, new.conv_id, new.members, content.recipient, content.client_id,
            content.kind, body, dict(content.ext),
        )

    def submit(self, work: Append | InboxAppend) -> None:
        """Queue an append (UNAVAILABLE once the node is shutting down). Appends
        submitted one after another are numbered in that order."""
        try:
            self._send_q.send_nowait(work)
        except trio.ClosedResourceError:
            raise TimpyError("the node is shutting down; send again to another node", Code.UNAVAILABLE) from None

    async def append(
        self, new: NewMessage, content: MessageContent, conversation: str, admin: bool = False
    ) -> SendResult:
        """At the conversation's owner: store a message and return once it is acknowledged."""
        pending = Append(new, content, conversation, admin)
        self.submit(pending)
        return await self.finish(pending)

    async def finish(self, pending: Append) -> SendResult:
        """Wait until the writer settled ``pending`` and every other owner's inbox has it."""
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
        for hold in self.holds:
            try:
                await hold(pending.result)
            except TimpyError as exc:
                raise TimpyError(
                    f"the message is stored but could not be handed to integrations ({exc.text}); send it again",
                    Code.UNAVAILABLE,
                ) from None
        return pending.result

    async def append_at_owner(
        self, new: NewMessage, content: MessageContent, conversation: str, attempts: int = SEND_ATTEMPTS
    ) -> SendResult:
        """Store ``new`` (made by ``prepare``) through its conversation's owner's
        writer (``conv.append``), retried while the ring moves; any kind of
        conversation (1:1 sends from another node, threads)."""
        args = ops.ConvAppend(new.conv_id, list(new.members), new.sender_id, new.dedup, new.created_ms, new.content)
        for attempt in range(attempts):
            try:
                # Safe to send twice (its dedup): a wait on an owner that stopped answering
                # ends once the ring gives the conversation to another node.
                sent = await self._peers.ask(ops.CONV_APPEND, args, follow_moves=True)
                return sent.result(conversation)
            except NotOwner:
                raise  # ``ask`` retried it as the ring moved already
            except TimpyError as exc:
                # The ring may be changing under us: the same client id makes a retry safe.
                if exc.code != Code.UNAVAILABLE or attempt == attempts - 1:
                    raise
                await trio.sleep(0.3 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _append_here(self, a: ops.ConvAppend) -> Awaitable[ops.Sent]:
        """At the conversation's owner: queued now, before answering, so one
        sender's requests keep their order (sync: the framework calls it as
        the request arrives)."""
        new = NewMessage(a.conv_id, tuple(a.members), a.sender_id, a.dedup, a.created_ms, a.content)
        try:
            decoded = MessageContent.unpack(new.content)  # the one decode of this message on this node
        except ValueError:
            raise RequestError("a forwarded message did not decode", Code.BAD_REQUEST) from None
        pending = Append(new, decoded, ids.conversation_text(new.conv_id))
        self.submit(pending)
        return self._sent(pending)

    async def _sent(self, pending: Append) -> ops.Sent:
        return ops.Sent.of(await self.finish(pending))

    def acknowledge(self, user_id: bytes, device_id: bytes, pos: int) -> None:
        """At the user's owner: a terminal has everything up to ``pos``; stored with the next batch."""
        key = (user_id, device_id)
        if pos > self._cursors.get(key, 0):
            self._cursors[key] = pos
        if not self._cursor_flush_queued:
            try:
                self._send_q.send_nowait(_FLUSH_CURSORS)
                self._cursor_flush_queued = True
            except trio.ClosedResourceError:
                pass  # shutting down: the writer stores pending cursors before it stops

    async def restore_inbox_entry(self, item: InboxItem) -> None:
        """Put a message back in a user's inbox through its owner's writer (at
        the head, unless it is there already): repair found it had lost its
        inbox slot to another message."""
        await self._peers.call(self._peers.owner(item.user_id), ops.INBOX_APPEND, ops.InboxAdd(
            [item.user_id], item.conv_id, item.seq, item.dedup, item.created_ms, item.sealed, item.epoch))

    def queue_depth(self) -> int:
        """Appends waiting for the writer."""
        return self._send_q.statistics().current_buffer_used

    def close(self) -> None:
        """No new appends; the writer finishes what is queued, then returns."""
        self._send_q.close()

    # --- the writer task -------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store and settle queued work until ``close`` is called and the queue is empty."""
        task_status.started()
        carried: Append | InboxAppend | None = None  # taken from the queue but over the last batch's bounds
        has_carried = False
        async with self._recv_q:
            while True:
                if has_carried:
                    first, has_carried = carried, False
                else:
                    try:
                        first = await self._recv_q.receive()
                    except trio.EndOfChannel:
                        break
                batch = [first]
                size, entries = _weight(first)
                bound = self.batch_bound()
                while len(batch) < bound:
                    try:
                        work = self._recv_q.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    more, more_entries = _weight(work)
                    if size + more > self._max_bytes or entries + more_entries > self._max_entries:
                        carried, has_carried = work, True  # the first of the next batch
                        break
                    batch.append(work)
                    size, entries = size + more, entries + more_entries
                await self._write(batch)
        if self._cursors:
            await self._write([])

    def batch_bound(self) -> int:
        """The appends one batch may take now: fewer when the batch is copied to replicas."""
        if self._cluster and not self._peers.placement.single:
            return min(self._max_batch, MAX_REPLICATED_BATCH)
        return self._max_batch

    async def _write(self, queued: Sequence[Append | InboxAppend | None], with_cursors: bool = True) -> None:
        news = [p for p in queued if type(p) is Append]
        inbox = [p for p in queued if type(p) is InboxAppend]
        if news and self.checks:
            news = await self._screen(news)
        cursors: dict[tuple[bytes, bytes], int] = {}
        if with_cursors:
            cursors, self._cursors = self._cursors, {}
            self._cursor_flush_queued = False
        if not news and not inbox and not cursors:
            return  # everything was refused: nothing to store
        local_users: frozenset[bytes] | None = None
        # A cluster of one holds every replica of every key: there is nothing
        # to catch up from, nobody to copy to and no other inbox to ask. A
        # ring of one that replaced a bigger ring still catches up from the
        # nodes that held its keys before: else it answers from its own copy
        # alone (NO_SUCH_USER for an account it never had).
        replicated = self._cluster and not self._peers.placement.single
        try:
            if self._cluster:
                if not self._peers.placement.alone:
                    news, inbox = await self._catch_up(news, inbox)
                    if not news and not inbox and not cursors:
                        return  # each was refused: its keys' copies are out of reach
                else:
                    await self._peers.await_write()  # a ring of one still needs its lease (a node not yet joined has none)
                local_users = frozenset(
                    u for p in news for u in p.new.members if not replicated or self._peers.is_local(u)
                )
            stamp = self._stamp()  # docs/consistency.md, "Epochs on rows"
            if self._floor.needs(stamp):
                await self._raise_floor(stamp)
            written: Written = await self._store.run(
                self._store.repo.write_batch, [p.new for p in news], [p.item for p in inbox], cursors, local_users,
                stamp,
            )
        except TimpyError as exc:
            for key, pos in cursors.items():  # keep them for the next try
                self._cursors[key] = max(pos, self._cursors.get(key, 0))
            items: list[Append | InboxAppend] = [*news, *inbox]
            # One request's error must not fail the others, and a storage
            # backend that is down must fail only the requests that need it:
            # store them one by one, cursors apart.
            if (isinstance(exc, RequestError) and len(items) > 1) or (
                isinstance(exc, StorageError) and (len(items) > 1 or cursors)
            ):
                for p in items:
                    await self._write([p], with_cursors=False)
                return
            for p in items:
                p.settle(exc)
            return
        if replicated:
            try:
                await self._replicate(news, inbox, written)
            except TimpyError as exc:
                for p in [*news, *inbox]:
                    p.settle(exc)
                return
        self._settle(news, inbox, written, replicated)

    def _settle(self, news: list[Append], inbox: list[InboxAppend], written: Written, replicated: bool) -> None:
        """After the commit (and the quorum): listeners, fan-out, results, in commit order."""
        committed: list[Committed] = []
        for p, appended in zip(news, written.appended, strict=True):
            if appended.duplicate:  # stored by an earlier try: its content may differ from this one's
                message = MessageContent.unpack(appended.content).at(p.conversation, appended.seq, appended.created_ms)
            else:
                message = p.content.at(p.conversation, appended.seq, appended.created_ms)
                committed.append(Committed(message, p.new.content, appended.inbox, True))
            p.result = SendResult(message, appended.duplicate)
        for p, placed in zip(inbox, written.placed, strict=True):
            p.pos = placed.pos
            if placed.new:
                it = p.item
                content = self._store.repo.open_sealed_message(it.conv_id, it.seq, it.sealed)
                message = MessageContent.unpack(content).at(p.conversation, it.seq, it.created_ms)
                committed.append(Committed(message, content, {it.user_id: placed.pos}, False))
        if committed:
            for listener in self.listeners:
                try:
                    listener(committed)
                except Exception:
                    self.listener_failures += 1
                    log.exception("a commit listener (%r) failed; the commit stands", listener)
        for p, appended in zip(news, written.appended, strict=True):
            if replicated:
                p.fanout = self._fan_out(p.new, appended.seq, appended.sealed, written.epoch)
            p.held = bool(self.holds)
            p.done.set()
        for p in inbox:
            p.done.set()

    def _stamp(self) -> int:
        """The stamp of a batch's new rows: the ring epoch, then the clock;
        never below one this writer gave before, so a clock set back (a time
        step of the machine) cannot make a slot's new write rank below a write
        of it that was undone in the same epoch."""
        stamp = max(row_stamp(self._peers.epoch_number, self.now_ms()), self._last_stamp + 1)
        self._last_stamp = stamp
        return stamp

    async def _raise_floor(self, stamp: int) -> None:
        """Keep the floor on disk above ``stamp`` before any row carries it."""
        try:
            await to_worker(self._floor.raise_to, stamp)
        except OSError as exc:
            raise StorageError(
                f"could not write {self._floor.path} in the data directory ({exc.strerror or exc}); "
                "nothing was stored: free disk space or fix the directory's permissions, then send again"
            ) from None

    async def _screen(self, news: list[Append]) -> list[Append]:
        """Run the checks in order; each sees what the ones before it let through."""
        for check in self.checks:
            try:
                refused = await check(news)
            except TimpyError as exc:
                refused = dict.fromkeys(news, exc)
            except Exception:
                log.exception("a writer check (%r) failed", check)
                refused = dict.fromkeys(news, TimpyError("internal error; it was logged", Code.INTERNAL))
            if refused:
                for p, exc in refused.items():
                    p.settle(exc)
                news = [p for p in news if p not in refused]
            if not news:
                break
        return news

    async def _catch_up(
        self, news: list[Append], inbox: list[InboxAppend]
    ) -> tuple[list[Append], list[InboxAppend]]:
        """Before writing keys this node took over, pull what their replicas
        have. Returns the appends to store: one whose key could not be caught
        up (too few of its copies in reach) is settled with that error here,
        and the rest of the batch goes on without waiting for it again."""
        def keys_of(p: Append | InboxAppend) -> set[tuple[str, bytes]]:
            if type(p) is InboxAppend:
                return {("user", p.item.user_id)}
            assert type(p) is Append
            return {("conv", p.new.conv_id)} | {("user", u) for u in p.new.members if self._peers.is_local(u)}

        await self._peers.await_write()  # no lease (no majority): refuse before anything is stored
        keys = {k for p in [*news, *inbox] for k in keys_of(p) if not self._replicator.is_warm(*k)}
        if not keys:
            return news, inbox  # every key caught up already under this ring: no task per key
        failed: dict[tuple[str, bytes], TimpyError] = {}

        async def ensure(kind: str, key: bytes) -> None:
            try:
                await self._replicator.ensure(kind, key)
            except TimpyError as exc:
                failed[(kind, key)] = exc

        async with trio.open_nursery() as nursery:
            for kind, key in keys:
                nursery.start_soon(ensure, kind, key)
        if not failed:
            return news, inbox
        # Each request that needs a key out of reach fails alone: before, the
        # batch was stored request by request, each catching up (and waiting
        # out the unreachable copies) again, while the writer held every other send.
        kept_news, kept_inbox = [], []
        for p in [*news, *inbox]:
            missed = [failed[k] for k in keys_of(p) if k in failed]
            if missed:
                p.settle(missed[0])
            elif type(p) is Append:
                kept_news.append(p)
            else:
                kept_inbox.append(p)
        return kept_news, kept_inbox

    async def _replicate(self, news: list[Append], inbox: list[InboxAppend], written: Written) -> None:
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
        for c in copies.values():
            # A node that holds a message's conversation and its users gets the
            # row once, not once per key: a third of the bytes and the merges.
            rows = c.messages
            if len(rows) > 1:
                seen: set[tuple[bytes, int]] = set()
                c.messages = [r for r in rows if (r[0], r[1]) not in seen and not seen.add((r[0], r[1]))]
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
            await self._replicator.undo(epoch, undo_rows, undo_inbox, written.epoch)
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
                node, ops.INBOX_APPEND, ops.InboxAdd(users, new.conv_id, seq, new.dedup, new.created_ms, sealed, epoch))
            for node, users in by_node.items()
        ]

    # --- what other nodes ask of this one ------------------------------------------

    def _inbox_here(self, a: ops.InboxAdd) -> Awaitable[list[int]]:
        """At the users' owner (each one checked): the entries queued now,
        together (one writer batch, in order); answers their positions."""
        text = ids.conversation_text(a.conv_id)
        pendings = []
        for user_id in a.user_ids:
            self._peers.require_owner(user_id, "user")
            pendings.append(InboxAppend(
                InboxItem(user_id, a.conv_id, a.seq, a.dedup, a.created_ms, a.sealed, a.epoch), text
            ))
        for pending in pendings:
            self.submit(pending)
        return self._placed(pendings)

    @staticmethod
    async def _placed(pendings: list[InboxAppend]) -> list[int]:
        for pending in pendings:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
        return [p.pos for p in pendings]
