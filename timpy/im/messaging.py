"""1:1 messaging: sends between two users, history, and the writer checks
that belong to messages (blocks between two users, recall and edit rules).

A send goes to its conversation's owner (``Peers``), where it is queued for
the node's one writer (``timpy.im.writer``): numbered, stored, replicated,
pushed to live terminals (``timpy.im.delivery``) and acknowledged in commit
order. When this node owns the conversation the send is queued at once and
the caller gets a ``SendTicket``, so a connection may have many sends in
flight; otherwise it goes through the writer's ``append_at_owner``
(``conv.append``), retried while the ring changes (the client id makes a
retry safe). Whether the recipient exists is asked of ``timpy.im.users``.

Its operations between nodes (``timpy.cluster.catalog``): ``conv.history``
(at the owner) and ``conv.history_stamped`` (at the other replicas when the
owner does not answer or keeps refusing: their rows with their stamps, merged
by the reader only once enough of them answered that every acknowledged
message is among them; ``conv.history_copy`` is still answered, for readers
of an earlier version).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from timpy.cluster import catalog as ops
from timpy.cluster.rpc import PeerUnavailable
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids, kinds
from timpy.im.delivery import stored_message
from timpy.im.peers import Peers
from timpy.im.ratelimit import TokenBucket
from timpy.im.records import Records
from timpy.im.replication import Replicator
from timpy.im.users import Identity, Users
from timpy.im.writer import SEND_ATTEMPTS, Append, Writer
from timpy.store.repository import Store
from timpy.store.rows import NewMessage
from timpy.wire.messages import (
    ChatMessage,
    MessageContent,
    SendResult,
)

log = logging.getLogger("timpy.messaging")

# Waits before asking again an owner that answered but could not serve a
# read (its lease renewing under a new ring): 3 s in all, as long as a write
# waits for the lease at its owner.
OWNER_RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6)
KNOWN_USERS_KEPT = 100_000  # recipients remembered to exist, then forgotten all at once and looked up again


class SendTicket:
    """A 1:1 send under way: ``wait()`` for its result, or ``now()`` when
    the writer has settled it already (no task switch for the common case)."""

    __slots__ = ("_pending", "_wait")

    def __init__(self, wait: Callable[[], Awaitable[SendResult]], pending: Append | None = None) -> None:
        self._wait = wait
        self._pending = pending

    def now(self) -> SendResult | None:
        """The result if it is known without waiting (raises the send's error); else None."""
        p = self._pending
        if p is None or not p.done.is_set() or p.fanout or p.held:
            return None
        if p.error is not None:
            if p.error.code == Code.UNAVAILABLE:
                return None  # ``wait`` tries again
            raise p.error
        return p.result

    async def wait(self) -> SendResult:
        return await self._wait()


# --- writer checks ------------------------------------------------------------------


class BlockedSenders:
    """Writer check: a 1:1 message to a user who blocked its sender is refused
    (the pair's record, at the conversation's owner, in queue order)."""

    def __init__(self, records: Records) -> None:
        self._records = records

    async def __call__(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        direct = [p for p in appends if p.direct and len(p.new.members) == 2]
        if not direct:
            return {}
        try:
            pairs = await self._records.get_many(list({p.new.conv_id for p in direct}), "pair")
        except TimpyError as exc:
            return dict.fromkeys(direct, exc)
        refused: dict[Append, TimpyError] = {}
        for p in direct:
            pair = pairs.get(p.new.conv_id)
            if pair and any(bytes(blocked) == p.new.sender_id for _, blocked in pair["blocked_ids"]):
                refused[p] = RequestError("this user does not accept your messages", Code.BLOCKED)
        return refused


class ActingKinds:
    """Writer check: an acting message a user sends (``kinds.SENT_ACTING``)
    may act on its target, by the rules of ``kinds.check_acting`` (it
    exists; a recall is the actor's, within the window, or by a group admin)."""

    def __init__(self, store: Store, limits: Callable[[], Limits], clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._limits = limits
        self._now = clock_ms

    async def __call__(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        refused: dict[Append, TimpyError] = {}
        for p in appends:
            c = p.content
            if c.kind not in kinds.SENT_ACTING:
                continue
            try:
                target_seq = kinds.target_of(c.kind, c.ext)
                row = await self._store.run(self._store.repo.get_message, p.new.conv_id, target_seq)
                target = None if row is None else stored_message(p.conversation, row.seq, row.created_ms, row.content)
                kinds.check_acting(
                    c.kind, c.sender, target, self._now(), int(self._limits().recall_window * 1000), p.admin, c.ext,
                )
            except TimpyError as exc:
                refused[p] = exc
        return refused


class Messenger:
    def __init__(
        self,
        store: Store,
        indexer: BlindIndexer,
        limits: Callable[[], Limits],
        peers: Peers,
        replicator: Replicator,
        writer: Writer,
        users: Users,
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._limits = limits
        self._peers = peers
        self._cluster = peers.rpc is not None
        self._replicator = replicator
        self._writer = writer
        self._users = users
        self._known_users: set[bytes] = set()  # recipients found to exist (accounts are never deleted)
        self._looking_up: dict[bytes, trio.Event] = {}  # users whose existence is being looked up
        self._peer_ids: dict[tuple[bytes, str], tuple[str, bytes, bytes, str]] = {}  # see _peer_of
        self._names: dict[str, tuple[str, bytes]] = {}  # a recipient as written -> (normalized name, user id)
        self._user_buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        # Who may read a conversation: its members, unless a rule here decides
        # otherwise for it (threads: the members of the thread's parent, now).
        # Each rule answers True or False for the conversations it knows, None
        # for the others.
        self.read_rules: list[Callable[[bytes, bytes], Awaitable[bool | None]]] = []
        peers.serve(ops.CONV_HISTORY, self._history_here, replicator)
        peers.serve(ops.CONV_HISTORY_COPY, self._history_copy)
        peers.serve(ops.CONV_HISTORY_STAMPED, self._history_stamped)

    def check_user_rate(self, user_id: bytes, now: float) -> None:
        """Messages per user on this node (``user_message_rate``); raises RATE_LIMITED."""
        bucket = self._user_buckets.get(user_id)
        if bucket is None:
            bucket = TokenBucket(self._limits().user_message_rate, self._limits().user_message_burst, now)
            self._user_buckets[user_id] = bucket
            while len(self._user_buckets) > 100_000:
                self._user_buckets.popitem(last=False)
        self._user_buckets.move_to_end(user_id)
        if not bucket.take(now):
            raise RequestError(
                f"more than {self._limits().user_message_rate:g} messages per second from this user; slow down",
                Code.RATE_LIMITED,
            )

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
            if not await self._users.exists(uid):
                raise RequestError("no such user", Code.NO_SUCH_USER)
            if len(self._known_users) >= KNOWN_USERS_KEPT:  # bounded, as the other id caches here
                self._known_users.clear()
            self._known_users.add(uid)
        finally:
            if self._looking_up.get(uid) is event:
                del self._looking_up[uid]
            event.set()

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
        peer = self._peer_ids.get((sender.user_id, recipient)) or self._peer_of(sender.user_id, recipient)
        new, content, conversation = self._prepare(sender, peer, client_id, kind, body, ext)  # checked before any lookup
        if peer[1] not in self._known_users:
            await self._require_user(peer[1])
        if self._writer.send_checks:  # webhooks that approve messages: before queueing, in this task
            new, content = await self._writer.screen_send(new, content, conversation)
        conv = new.conv_id
        # Owned here: queued now, not through ``conv.append`` (so the ticket
        # may be settled without a task switch, and the writer sees the
        # connection's sends in order).
        if not self._cluster or self._peers.placement.single or self._peers.owner(conv) == self._peers.self_id:
            pending = Append(new, content, conversation)
            self._writer.submit(pending)

            async def result() -> SendResult:
                try:
                    return await self._writer.finish(pending)
                except TimpyError as exc:
                    if exc.code != Code.UNAVAILABLE:
                        raise
                # The ring may be changing under us: the same client id makes a retry safe.
                await trio.sleep(0.3)
                return await self._writer.append_at_owner(new, content, conversation, SEND_ATTEMPTS - 1)

            return SendTicket(result, pending)
        return SendTicket(lambda: self._writer.append_at_owner(new, content, conversation, SEND_ATTEMPTS))

    def _peer_of(self, sender_id: bytes, recipient: str) -> tuple[str, bytes, bytes, str]:
        """(normalized name, user id, 1:1 conversation id and text) of a
        sender's recipient: keyed hashes, kept for the next send."""
        known = self._names.get(recipient)
        if known is None:  # a sender meets most recipients for the first time: each name is checked once
            name = ids.normalize_name(recipient)
            known = (name, ids.user_id(self._indexer, name))
            if len(self._names) >= 100_000:
                self._names.clear()
            self._names[recipient] = known
        name, rid = known
        conv = ids.direct_conversation(self._indexer, sender_id, rid)
        if len(self._peer_ids) >= 100_000:
            self._peer_ids.clear()
        peer = self._peer_ids[(sender_id, recipient)] = (name, rid, conv, ids.conversation_text(conv))
        return peer

    def _prepare(
        self, sender: Identity, peer: str | tuple[str, bytes, bytes, str], client_id: str, kind: int, body: bytes,
        ext: dict[str, str] | None,
    ) -> tuple[NewMessage, MessageContent, str]:
        """A checked send to ``peer`` (a name, or what ``_peer_of`` gives), its content and its conversation's text id."""
        if isinstance(peer, str):
            peer = self._peer_of(sender.user_id, peer)
        recipient, rid, conv, conversation = peer
        members = (sender.user_id,) if rid == sender.user_id else (sender.user_id, rid)
        new, content = self._writer.prepare(
            sender.user_id, sender.name, conv, members, recipient, client_id, kind, body, ext
        )
        return new, content, conversation

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
        if limit <= 0 or limit > self._limits().history_page_max:
            limit = self._limits().history_page_max
        text = ids.conversation_text(conv)
        found = await self._read_history(ops.HistoryOf(
            conv, who.user_id, max(0, before_seq), -1 if after_seq is None else max(0, after_seq), limit))
        if not found.member:
            if peer:  # a conversation that has no message yet
                return text, [], False
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        shown = [  # not recalled or burned
            MessageContent.unpack(r.content).at(text, r.seq, r.created_ms) for r in found.rows if r.content
        ]
        return text, [m for m in shown if m.kind not in kinds.ACTING], found.more

    async def _read_history(self, args: ops.HistoryOf) -> ops.History:
        """From the conversation's owner, the one copy caught up after a ring
        change. An owner that answers but cannot serve now (most often its
        lease is renewing under a new ring, for a second or two) is asked
        again for up to ``OWNER_RETRY_DELAYS``; an owner that does not answer,
        or still refuses, gives way to the other replicas' copies
        (``_history_copy``: each may lack the newest messages, never one below
        them) and the one that reaches furthest is shown."""
        others = self._peers.placement.replicas(args.conv_id)[1:] if self._cluster else []
        ownership = self._peers.ownership
        last: TimpyError | None = None
        for delay in (*OWNER_RETRY_DELAYS, None):
            try:
                return await self._peers.ask(ops.CONV_HISTORY, args, follow_moves=True)  # a read
            except PeerUnavailable as exc:  # no answer: waiting longer would not help
                last = exc
                break
            except TimpyError as exc:
                if exc.code != Code.UNAVAILABLE:
                    raise
                last = exc
            if delay is None or (ownership is not None and ownership.cut_off()):
                break  # a node cut off from the majority refuses at once
            await trio.sleep(delay)
        assert last is not None
        if not others:
            raise last
        log.info("history of %s read from the other replicas: the owner %s (%s)",
                 args.conv_id.hex(), "did not answer" if isinstance(last, PeerUnavailable) else "refused", last.text)
        found = await self._history_from_replicas(args, last)
        if found is None:
            raise TimpyError(
                "the node that holds this conversation does not answer, and too few of its other copies do to "
                "be sure of every message; retry in a few seconds", Code.UNAVAILABLE)
        return found

    async def _history_from_replicas(self, args: ops.HistoryOf, owner_error: TimpyError) -> ops.History | None:
        """The page from the key's other replicas, or None when they cannot
        be sure to show every acknowledged message.

        An acknowledged message is on W of the R replicas of the ring it was
        written under: the current one, or one of the epoch's history (a key
        untouched since is only there). So the replicas that answer must
        include, in each of those rings, R − W + 1 of its replicas, the
        owner counting as not answering, as catch-up asks of a new owner.
        Their rows are merged slot by slot, the higher stamp winning (an
        undo that missed one of them leaves a lower-stamped row where the
        acknowledged one now is: docs/consistency.md, "Epochs on rows"), and
        the page must have no hole."""
        placement = self._peers.placement
        me = self._peers.self_id
        current = placement.replicas(args.conv_id)
        # The current ring too: writes under the current epoch are on W of its replicas.
        rings = [current, *placement.history_replicas(args.conv_id)]
        owner = current[0]
        asked = sorted(set(current).union(*rings) - {owner} - placement.gone)
        copies: dict[str, ops.HistoryCopy] = {}

        async def copy_at(node: str) -> None:
            try:
                if node == me:
                    copies[node] = await self._history_stamped(args)
                else:
                    copies[node] = await self._peers.call(node, ops.CONV_HISTORY_STAMPED, args)
            except TimpyError as exc:
                log.info("a replica's copy of %s was not read: %s", args.conv_id.hex(), exc.text)

        async with trio.open_nursery() as nursery:
            for node in asked:
                nursery.start_soon(copy_at, node)
        for replicas in rings:
            if len(set(copies) & set(replicas)) < placement.answers_needed(replicas):
                return None
        if not copies:
            return None
        if not all(c.member for c in copies.values()):
            return ops.History(False, [], False)
        page = merge_copies(list(copies.values()), args.before, None if args.after < 0 else args.after, args.limit)
        if page is None:
            return None
        rows, more = page
        return ops.History(True, [ops.HistoryRow(r.seq, r.created_ms, r.content) for r in rows], more)

    async def _history_here(self, a: ops.HistoryOf) -> ops.History:
        """At the conversation's owner (caught up by the operation); a replica answers with ``_history_copy``."""
        if not await self.may_read(a.conv_id, a.user_id):
            return ops.History(False, [], False)
        rows, more = await self._store.run(
            self._store.repo.read_history, a.conv_id, a.before, None if a.after < 0 else a.after, a.limit
        )
        return ops.History(True, [ops.HistoryRow(r.seq, r.created_ms, r.content) for r in rows], more)

    async def may_read(self, conv_id: bytes, user_id: bytes) -> bool:
        """May the user read the conversation's history (here, where it is held)?"""
        for rule in self.read_rules:
            allowed = await rule(conv_id, user_id)
            if allowed is not None:
                return allowed
        return bool(await self._store.run(self._store.repo.is_member, conv_id, user_id))

    async def _history_copy(self, a: ops.HistoryOf) -> ops.History:
        """At a replica, when the owner could not serve the read: this node's
        copy, if the page shows no hole. A replica is not caught up the way
        a new owner is: its copy may lack messages whose copies, or the
        repair that brings them, have not reached it yet (write quorum W of
        R; a node that became a replica at the last ring change holds only
        what was written since until repair has run). Lacking the newest is
        shown as such; a page with a hole below them is refused, and the
        reader asks the next replica."""
        if not self._peers.placement.holds(a.conv_id):
            raise TimpyError("this node holds no copy of that conversation", Code.UNAVAILABLE)
        head = await self._store.run(self._store.repo.conversation_head, a.conv_id)
        if head == 0:
            raise TimpyError("this node holds no message of that conversation yet", Code.UNAVAILABLE)
        if not await self.may_read(a.conv_id, a.user_id):
            return ops.History(False, [], False)
        after = None if a.after < 0 else a.after
        # One row beyond the page on the side the reader pages towards: the
        # next page must continue where this one ends.
        rows, _ = await self._store.run(self._store.repo.read_history, a.conv_id, a.before, after, a.limit + 1)
        if not copy_page_is_whole([r.seq for r in rows], head, a.before, after, a.limit):
            raise TimpyError("this node's copy of that conversation lacks messages here (its repair has not "
                             "finished); retry in a few seconds", Code.UNAVAILABLE)
        more = len(rows) > a.limit
        page = rows[: a.limit] if after is not None else rows[len(rows) - a.limit:] if more else rows
        return ops.History(True, [ops.HistoryRow(r.seq, r.created_ms, r.content) for r in page], more)


    async def _history_stamped(self, a: ops.HistoryOf) -> ops.HistoryCopy:
        """At a replica, when the owner could not serve the read: this node's
        rows of the page with their stamps, and its highest seq, as held (the
        reader merges several replicas' and checks the result)."""
        placement = self._peers.placement
        if not placement.holds(a.conv_id) and not placement.held_before(a.conv_id):
            raise TimpyError("this node holds no copy of that conversation", Code.UNAVAILABLE)
        if not await self.may_read(a.conv_id, a.user_id):
            return ops.HistoryCopy(False, [], 0)
        head = await self._store.run(self._store.repo.conversation_head, a.conv_id)
        after = None if a.after < 0 else a.after
        rows, _ = await self._store.run(self._store.repo.read_history, a.conv_id, a.before, after, a.limit + 1)
        return ops.HistoryCopy(True, [ops.StampedRow(r.seq, r.created_ms, r.content, r.epoch) for r in rows], head)


def merge_copies(
    copies: Sequence[ops.HistoryCopy], before: int, after: int | None, limit: int
) -> tuple[list[ops.StampedRow], bool] | None:
    """Replicas' pages of one conversation merged: each slot's value with the
    highest stamp (equal stamps: the first copy's), then the page asked for
    (``limit`` rows after ``after``, or the newest before ``before``, 0 = the
    latest) and whether more lie beyond it; None if the merged rows show a
    hole there. Each copy holds ``limit`` + 1 rows on the side the reader
    pages towards (``copy_page_is_whole``)."""
    by_seq: dict[int, ops.StampedRow] = {}
    for copy in copies:
        for row in copy.rows:
            held = by_seq.get(row.seq)
            if held is None or row.stamp > held.stamp:
                by_seq[row.seq] = row
    head = max((c.head for c in copies), default=0)
    seqs = sorted(by_seq)
    if after is not None:
        window = [q for q in seqs if q > after][: limit + 1]
    else:
        window = [q for q in seqs if before <= 0 or q < before][-(limit + 1):]
    if not copy_page_is_whole(window, head, before, after, limit):
        return None
    more = len(window) > limit
    page = window[:limit] if after is not None else window[len(window) - limit:] if more else window
    return [by_seq[q] for q in page], more


def copy_page_is_whole(seqs: Sequence[int], head: int, before: int, after: int | None, limit: int) -> bool:
    """Whether a replica's page of history shows every message it should.

    ``seqs``: the page's sequence numbers, oldest first, read with one row
    more than ``limit`` on the side the reader pages towards (older for a
    page before ``before``, 0 = the latest; newer for one after ``after``);
    ``head``: the replica's highest seq. A conversation's sequence has no
    gap, so the page must be consecutive and start where it should: right
    after ``after``; or end at the newest this replica holds below
    ``before`` and reach back to seq 1 unless the extra row continues it.
    Lacking messages above ``head`` is allowed: the replica is behind."""
    if any(b != a + 1 for a, b in itertools.pairwise(seqs)):
        return False
    if after is not None:
        return not seqs or seqs[0] == after + 1
    top = head if before <= 0 else min(before - 1, head)
    if not seqs:
        return top <= 0
    return seqs[-1] == top and (seqs[0] == 1 or len(seqs) > limit)
