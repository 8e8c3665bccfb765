"""Delivery to terminals: a user's live terminals get each message in inbox
order, once, and a terminal that was away gets what it missed.

- A terminal that logs in is recorded with its user's owner (``Routes``),
  which answers its stored delivery cursor; it then syncs from there
  (``sync``: inbox pages read at the user's owner) and goes live.
- After each commit the writer hands the committed messages to ``on_commit``
  (a writer listener), which pushes each inbox entry to the user's live
  terminals, here and on the nodes holding others (``Routes.push``).
- A terminal's acknowledged position goes to the user's owner's writer,
  stored with its next batch (``acknowledge``).
- When the ring changes, or an owner restarts and asks for them, terminals
  are recorded again with their users' (possibly new) owners and synced from
  where they are, in case a push went out while no owner knew of them.

Its operations between nodes (``timpy.cluster.catalog``), each at the
user's owner: ``term.open``, ``inbox.read``, ``term.ack``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import trio

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.errors import Code, TimpyError
from timpy.im import ids, kinds
from timpy.im.batches import BatchedCalls
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.routes import Routes
from timpy.im.tasks import TaskHost
from timpy.im.terminals import LiveTerminal, TerminalRegistry
from timpy.im.writer import Committed, Writer
from timpy.store.repository import Store
from timpy.store.rows import InboxEntry, StoredMessage
from timpy.wire.messages import ChatMessage, Delivery, MessageContent

REATTACH_ATTEMPTS = 15  # tries to record a live terminal with its user's new owner (about 25 s)
RESYNC_ATTEMPTS = 8  # tries to sync a live terminal while the cluster answers "unavailable" (about 9 s)


def stored_message(conversation: str, seq: int, created_ms: int, content: bytes) -> ChatMessage:
    """A stored message for a reader: a placeholder when it was recalled or burned (no content left)."""
    if not content:
        return kinds.deleted_placeholder(conversation, seq, created_ms)
    return MessageContent.unpack(content).at(conversation, seq, created_ms)


class Deliverer:
    def __init__(
        self,
        store: Store,
        peers: Peers,
        replicator: Replicator,
        registry: TerminalRegistry,
        writer: Writer,
        tasks: TaskHost,
        limits: Callable[[], Limits],
        clock_ms: Callable[[], int],
        *,
        ask_on_start: bool = True,
    ) -> None:
        self._store = store
        self._peers = peers
        self._replicator = replicator
        self._registry = registry
        self._writer = writer
        self._tasks = tasks
        self._limits = limits
        self._now = clock_ms
        self.routes = Routes(peers, registry, limits, resend=self._reattach_owned_by, ask_on_start=ask_on_start)
        # Logins that arrive together open their terminals in one transaction.
        self._terminal_opens: BatchedCalls[tuple[bytes, bytes, int], int] = BatchedCalls(
            lambda items: self._store.run(self._store.repo.open_terminals, items)
        )
        # Inbox pages read together (the syncs of logins that arrive together) share one storage call.
        self._inbox_reads: BatchedCalls[tuple[bytes, int, int], list[InboxEntry]] = BatchedCalls(
            lambda reads: self._store.run(self._store.repo.read_inboxes, reads)
        )
        peers.serve(ops.TERM_OPEN, self._open_terminal_here, replicator)
        peers.serve(ops.INBOX_READ, self._inbox_here, replicator)
        peers.serve(ops.TERM_ACK, self._ack_here)

    # --- the writer's listener ---------------------------------------------------

    def on_commit(self, committed: Sequence[Committed]) -> None:
        """Push each committed inbox entry to its user's live terminals (writer listener; never waits)."""
        push = self.routes.push
        for c in committed:
            for user_id, pos in c.inbox.items():
                push(user_id, Delivery(pos, c.message), c.content, c.message.server_time)

    # --- terminals -------------------------------------------------------------------

    async def open_terminal(self, terminal: LiveTerminal) -> int:
        """Record the terminal with its user's owner; returns its delivery cursor.
        (Its maker gives it ``resync`` as its ``on_gap``.)"""
        return await self._peers.ask(
            ops.TERM_OPEN, ops.TermOpen(terminal.user_id, terminal.device_id, self._peers.self_id, terminal.kind))

    async def _open_terminal_here(self, a: ops.TermOpen) -> int:
        """At the user's owner (caught up by the operation): record the terminal, answer its cursor."""
        self.routes.check(a.user_id, a.device_id, a.kind)  # a refused login changes nothing
        cursor = await self._terminal_opens.call((a.user_id, a.device_id, self._now()))
        self.routes.attach(a.user_id, a.device_id, a.node, a.kind)
        return cursor

    def close_terminal(self, terminal: LiveTerminal) -> None:
        self._registry.detach(terminal)
        if self._registry.find(terminal.user_id, terminal.device_id) is None:
            self.routes.detach(terminal.user_id, terminal.device_id)

    def reattach_terminals(self) -> None:
        """The ring changed: record every terminal here with its user's
        (possibly new) owner, and sync each from where it is, in case a push
        was sent while the owner had no record of it."""
        for terminal in self._registry.all():
            self._tasks.spawn(self._reattach, terminal)
        self.ask_for_terminals(self._peers.placement.members)

    def ask_for_terminals(self, members: Iterable[str]) -> None:
        """Ask each member met for the first time since this node started to
        record with it the terminals of the users it owns (``Routes``)."""
        for node in self.routes.not_yet_asked(members):
            self._tasks.spawn(self.routes.ask_for_terminals, node)

    def _reattach_owned_by(self, owner: str) -> int:
        """``owner`` (re)started: record with it the terminals here whose users it owns."""
        mine = [t for t in self._registry.all() if self._peers.owner(t.user_id) == owner]
        for terminal in mine:
            self._tasks.spawn(self._reattach, terminal)
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
            self.resync(terminal)

    def resync(self, terminal: LiveTerminal) -> None:
        """Sync ``terminal`` from its last position in the background: a
        delivery skipped positions (``LiveTerminal.on_gap``) or the ring moved."""
        self._tasks.spawn(self._run_resync, terminal)

    async def _run_resync(self, terminal: LiveTerminal) -> None:
        # A ring change on its way makes the owner answer "unavailable" for a
        # moment (each epoch revokes the leases): try again while the
        # terminal lives, and close it only when that lasts.
        for attempt in range(RESYNC_ATTEMPTS):
            try:
                await self.sync(terminal, terminal.last_pos)
                return
            except TimpyError as exc:
                if exc.code != Code.UNAVAILABLE or attempt == RESYNC_ATTEMPTS - 1:
                    terminal.link.close(f"could not catch up on missed messages ({exc.text}); reconnect", exc.code)
                    return
            await trio.sleep(min(0.2 * 2**attempt, 2.0))
            if self._registry.find(terminal.user_id, terminal.device_id) is not terminal:
                return  # closed meanwhile

    # --- sync and acknowledgements ----------------------------------------------------

    async def _inbox_here(self, a: ops.InboxRead) -> list[ops.InboxEntry]:
        """At the user's owner (caught up by the operation): a page of the inbox after ``a.after``."""
        entries = await self._inbox_reads.call((a.user_id, a.after, a.limit))
        m: StoredMessage
        return [ops.InboxEntry(e.pos, (m := e.message).conv_id, m.seq, m.created_ms, m.content) for e in entries]

    async def sync(self, terminal: LiveTerminal, cursor: int) -> tuple[int, int]:
        """Send the terminal everything after ``cursor``, then make it live.

        Returns the last position sent and how many deliveries were sent.
        """
        terminal.begin_sync()
        last, count, page = cursor, 0, self._limits().sync_page
        for _ in range(100_000):  # bounded: each round reads a page or goes live
            entries = await self._peers.ask(  # a read: follows the inbox to its next owner
                ops.INBOX_READ, ops.InboxRead(terminal.user_id, last, page), follow_moves=True)
            for e in entries:
                message = stored_message(ids.conversation_text(e.conv_id), e.seq, e.created_ms, e.content)
                await terminal.link.push(Delivery(e.pos, message))
                last = e.pos
                count += 1
            if len(entries) < page and terminal.finish_sync(last):
                break
        return last, count

    def acknowledge(self, terminal: LiveTerminal, pos: int) -> None:
        """The terminal has everything up to ``pos``; stored with the owner's next write batch."""
        self._peers.tell(ops.TERM_ACK, ops.TermAck(terminal.user_id, terminal.device_id, pos))

    def _ack_here(self, a: ops.TermAck) -> None:
        self._writer.acknowledge(a.user_id, a.device_id, a.pos)
