"""Threads: a sub-conversation under one message (its root).

A thread is a conversation of its own, with an id derived from its parent
conversation and its root's seq (keyed BLAKE2b, like every id), so it is
placed on the ring (or a backend) by itself and numbered by its own owner's
writer: its own gap-free sequence. A message to a thread is a send whose
``ext["thread"]`` names the root's seq, in the 1:1 conversation (recipient)
or the group (conversation) that holds the root. The parent's owner checks
that the sender may write there (membership, blocks, a group's mutes) and
that the root is there and shown, and gives the parent's members; the
thread's owner stores the message in their inboxes, so it reaches every
member's terminals, live or on their next sync, with ``ext["thread_of"]`` set
to the parent. History reads a thread by its id; ``summaries`` gives the
thread id and message count of given root messages.

Who may read a thread is who may read its parent, now (a rule of the
messenger's ``read_rules``): a member who joined a group later reads the
threads started before, as they read the group's earlier messages, and one
who left reads neither. The thread's owner learns the parent from a stored
message of the thread (``ext["thread_of"]`` and ``ext["thread"]``), trusted
only when the thread's id is the one those two give.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from timpy.cluster import catalog as ops
from timpy.cluster.rpc import NotOwner
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids, kinds
from timpy.im.peers import Peers
from timpy.im.records import Records
from timpy.im.references import check_reply_target
from timpy.im.replication import Replicator
from timpy.im.users import Identity, Users
from timpy.im.writer import Writer
from timpy.store.repository import Store
from timpy.wire.messages import KIND_BURN, SendResult, unpack_content

MAX_ROOTS = 200  # roots per summary request
_PARENTS_MAX = 10_000  # threads whose parent a node remembers
_PARENT_SCAN = 200  # messages read to find a thread's parent (past recalled ones)


def thread_of(indexer: BlindIndexer, parent: bytes, root_seq: int) -> bytes:
    """The id of the thread under message ``root_seq`` of conversation ``parent``."""
    return indexer.index("thread", parent, root_seq.to_bytes(8, "big"))


def root_of(ext: dict[str, str]) -> int:
    raw = ext.get("thread", "")
    if not raw.isdigit() or int(raw) <= 0:
        raise RequestError('a thread message names its root message as ext["thread"] = its seq', Code.INVALID_MESSAGE)
    return int(raw)


class Threads:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, replicator: Replicator, records: Records,
        users: Users, writer: Writer,
        check_group_sender: Callable[[bytes, str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._replicator = replicator
        self._records = records
        self._users = users
        self._writer = writer
        self._check_group_sender = check_group_sender  # at a group's owner: may this user send to it now?
        peers.serve(ops.THREAD_ROOT, self._root_here, replicator)
        peers.serve(ops.THREAD_MEMBER, self._member_here, replicator)
        peers.serve(ops.THREAD_HEADS, self._heads)
        self._parents: OrderedDict[bytes, bytes | None] = OrderedDict()  # conversation -> its parent (None: no thread)

    async def _parent(self, who: Identity, recipient: str, conversation: str) -> tuple[bytes, str]:
        """(parent conversation id, the recipient field of its messages)."""
        if recipient:
            peer, _pid, conv = await self._users.peer_of(who, recipient)
            return conv, peer
        if conversation:
            return ids.parse_conversation(conversation), "#" + conversation
        raise RequestError("a thread message names its conversation (a group) or its recipient", Code.BAD_REQUEST)

    async def send(
        self, who: Identity, recipient: str, conversation: str, client_id: str, kind: int, body: bytes,
        ext: dict[str, str],
    ) -> SendResult:
        """Store a message in the thread under ``ext["thread"]``; delivered to the parent's members."""
        root = root_of(ext)
        if kind == KIND_BURN:  # its burn notice would be stored by the node without the thread's mark
            raise RequestError("burn-after-reading is not for threads", Code.BAD_REQUEST)
        parent, to = await self._parent(who, recipient, conversation)
        members = await self._peers.ask(ops.THREAD_ROOT, ops.ThreadRoot(parent, who.user_id, who.name, root))
        thread = thread_of(self._indexer, parent, root)
        ext = {**ext, "thread_of": ids.conversation_text(parent)}
        new, content = self._writer.prepare(
            who.user_id, who.name, thread, tuple(members), to, client_id, kind, body, ext
        )
        return await self._writer.append_at_owner(new, content, ids.conversation_text(thread))

    async def _root_here(self, a: ops.ThreadRoot) -> list[bytes]:
        """At the parent's owner (caught up): may the sender write under this root? The parent's members."""
        parent, sender_id = a.conv_id, a.sender_id
        if not await self._store.run(self._store.repo.is_member, parent, sender_id):
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        row = await self._store.run(self._store.repo.get_message, parent, a.root)
        target = None if row is None or row.deleted else unpack_content("", row.seq, row.created_ms, row.content)
        check_reply_target(row is not None, row is None or row.deleted,
                                       target is not None and target.kind in kinds.ACTING)
        assert target is not None
        if target.recipient.startswith("#"):
            await self._check_group_sender(parent, a.sender)
        else:
            pair = await self._records.get(parent, "pair", "conv")
            if pair and any(bytes(blocked) == sender_id for _, blocked in pair["blocked_ids"]):
                raise RequestError("this user does not accept your messages", Code.BLOCKED)
        return await self._store.run(self._store.repo.conversation_members, parent)

    async def _member_here(self, a: ops.ThreadMember) -> bool:
        return await self._store.run(self._store.repo.is_member, a.conv_id, a.user_id)

    async def may_read(self, conv: bytes, user_id: bytes) -> bool | None:
        """For a thread: is the user in its parent now? None for any other conversation.
        (A rule for ``Messenger.read_rules``; the node adds it.)"""
        parent = await self._parent_of(conv)
        if parent is None:
            return None
        return bool(await self._peers.ask(ops.THREAD_MEMBER, ops.ThreadMember(parent, user_id)))

    async def _parent_of(self, conv: bytes) -> bytes | None:
        """The parent of a thread held here, from its stored messages; None
        for a conversation that is not a thread (or has nothing readable yet)."""
        if conv in self._parents:
            self._parents.move_to_end(conv)
            return self._parents[conv]
        rows, more = await self._store.run(self._store.repo.read_history, conv, 0, 0, 1)  # its first message
        if rows and not rows[0].content and more:  # taken back: the next ones
            rows, _ = await self._store.run(self._store.repo.read_history, conv, 0, rows[0].seq, _PARENT_SCAN)
        first = next((r for r in rows if r.content), None)
        if first is None:
            return None  # nothing to read, or every message taken back: decided by membership
        parent: bytes | None = None
        ext = unpack_content("", first.seq, first.created_ms, first.content).ext
        try:
            candidate = ids.parse_conversation(ext.get("thread_of", ""))
            if thread_of(self._indexer, candidate, root_of(ext)) == conv:
                parent = candidate
        except RequestError:
            parent = None  # not a thread message (a client's ext says nothing the id does not prove)
        self._parents[conv] = parent
        while len(self._parents) > _PARENTS_MAX:
            self._parents.popitem(last=False)
        return parent

    async def summaries(
        self, who: Identity, recipient: str, conversation: str, roots: list[int]
    ) -> list[tuple[int, str, int]]:
        """(root seq, thread id, messages in it) for each root of a conversation the user is in."""
        if len(roots) > MAX_ROOTS:
            raise RequestError(f"ask for at most {MAX_ROOTS} threads at once", Code.BAD_REQUEST)
        if any(not isinstance(r, int) or r <= 0 for r in roots):
            raise RequestError("a thread's root is a message seq of 1 or more", Code.BAD_REQUEST)
        parent, _ = await self._parent(who, recipient, conversation)
        if not await self._peers.ask(ops.THREAD_MEMBER, ops.ThreadMember(parent, who.user_id)):
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        threads = {thread_of(self._indexer, parent, r): r for r in dict.fromkeys(roots)}
        counts: dict[bytes, int] = {}
        for owner, keys in self._peers.by_owner(threads).items():
            counts.update(await self._peers.call(owner, ops.THREAD_HEADS, ops.ThreadHeads(keys)))
        return [(threads[t], ids.conversation_text(t), counts.get(t, 0)) for t in threads]

    async def _heads(self, a: ops.ThreadHeads) -> list[tuple[bytes, int]]:
        """At the threads' owner: (thread, its newest seq) for each."""
        if any(not self._peers.is_local(k) for k in a.threads):
            raise NotOwner.of("thread")
        self._peers.require_write()
        out = []
        for key in a.threads:
            await self._replicator.ensure("conv", key)
            out.append((key, await self._store.run(self._store.repo.conversation_head, key)))
        return out
