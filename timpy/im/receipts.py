"""Receipts, read marks, unread counts and burn-after-reading.

A member reports that it has received (delivered) or read a conversation up
to a sequence. The conversation's owner checks membership, and for a read
receipt of a 1:1 conversation burns the BURN messages it covers that the
other side sent: it stores a BURNED message for each (client id
"burned-SEQ", so a repeated receipt burns nothing twice), whose row deletes
the target wherever it lands (``kinds``). Then the reader's mark moves
forward at the reader's owner (marks never move back), and the receipt is
pushed to the other members' terminals and the reader's other terminals
(groups above ``receipt_push_max_members`` members: stored, not pushed).

Unread counts are computed at the user's owner from the inbox entries after
each conversation's read mark, leaving out the user's own messages and the
acting kinds (recall, edit, burned).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids, kinds
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.signal_routes import Signals
from timpy.im.users import Identity
from timpy.im.writer import Writer
from timpy.store.repository import Store
from timpy.store.rows import Copies, NewMessage
from timpy.wire.messages import KIND_BURN, KIND_BURNED, MessageContent, Receipt

BURN_SCAN = 1000  # messages a read receipt looks through for BURN messages
UNREAD_SCAN = 10_000  # inbox entries counted for unread counts (the newest)


class Receipts:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, replicator: Replicator, writer: Writer,
        signals: Signals, limits: Callable[[], Limits],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._replicator = replicator
        self._writer = writer
        self._signals = signals
        self._limits = limits
        self.burned = 0  # BURN messages burned by this node (metrics, tests)
        self.marked: list[Callable[[bytes, bytes], None]] = []  # told (user id, conv id) when a read mark moved
        peers.serve(ops.RECEIPT_CONV, self._conv_here, replicator)
        peers.serve(ops.RECEIPT_MARK, self._mark_here, replicator, self._mark_copies)
        peers.serve(ops.RECEIPT_GET_MARK, self._get_mark_here, replicator)
        peers.serve(ops.RECEIPT_UNREAD, self._unread_here, replicator)

    async def receipt(self, who: Identity, device_id: bytes, conversation: str, seq: int, read: bool) -> None:
        conv = ids.parse_conversation(conversation)
        if not isinstance(seq, int) or seq <= 0:
            raise RequestError("a receipt names a sequence number of 1 or more", Code.BAD_REQUEST)
        await self._peers.ask(ops.RECEIPT_CONV, ops.ReceiptConv(conv, who.user_id, who.name, device_id, seq, bool(read)))

    async def _conv_here(self, a: ops.ReceiptConv) -> None:
        conv, user_id, device_id, name, read = a.conv_id, a.user_id, a.device_id, a.name, a.read
        if not await self._store.run(self._store.repo.is_member, conv, user_id):
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        seq = min(a.seq, await self._store.run(self._store.repo.conversation_head, conv))
        if seq <= 0:
            return
        members = await self._store.run(self._store.repo.conversation_members, conv)
        text = ids.conversation_text(conv)
        if read:
            before = await self._peers.ask(ops.RECEIPT_GET_MARK, ops.MarkOf(user_id, conv))
            if seq <= before:
                return  # read already: marks never move back, and nobody is told again
            direct = len(members) == 2 and ids.direct_conversation(self._indexer, *members) == conv
            if direct:
                await self._burn(conv, text, members, user_id, name, max(before, seq - BURN_SCAN), seq)
            await self._peers.ask(ops.RECEIPT_MARK, ops.ReadMark(user_id, conv, seq))
        if len(members) <= self._limits().receipt_push_max_members:
            self._signals.push(members, Receipt(text, seq, bool(read), str(name)), skip=(user_id, device_id))

    async def _burn(
        self, conv: bytes, text: str, members: list[bytes], reader_id: bytes, reader: str, after: int, upto: int
    ) -> None:
        rows, _ = await self._store.run(self._store.repo.read_history, conv, 0, after, upto - after)
        for row in rows:
            if not row.content or row.seq > upto:
                continue
            m = MessageContent.unpack(row.content)
            if m.kind != KIND_BURN or m.sender == reader:
                continue
            client_id = f"burned-{row.seq}"
            content = MessageContent(client_id, reader, m.sender, KIND_BURNED, b"", {"target": str(row.seq)})
            new = NewMessage(
                conv_id=conv, members=tuple(members), sender_id=reader_id,
                dedup=ids.dedup_index(self._indexer, reader_id, client_id), created_ms=self._writer.now_ms(),
                content=content.pack(),
            )
            result = await self._writer.append(new, content, text)
            if not result.duplicate:
                self.burned += 1

    async def _get_mark_here(self, a: ops.MarkOf) -> int:
        marks = (await self._store.run(self._store.repo.unread, a.user_id, 0))[1]
        return marks.get(a.conv_id, 0)

    async def _mark_here(self, a: ops.ReadMark) -> int:
        before = await self._store.run(self._store.repo.mark_read, a.user_id, a.conv_id, a.seq)
        for listener in self.marked:
            listener(a.user_id, a.conv_id)
        return before

    @staticmethod
    def _mark_copies(a: ops.ReadMark, _before: int) -> Callable[[], Awaitable[Copies]]:
        async def mark() -> Copies:
            return Copies(reads=[(a.user_id, a.conv_id, a.seq)])

        return mark

    async def unread(self, who: Identity) -> tuple[dict[str, int], dict[str, int]]:
        """Unread messages per conversation, and the read marks, for ``who``."""
        found = await self._peers.ask(ops.RECEIPT_UNREAD, ops.UnreadOf(who.user_id, who.name))
        return found.counts, found.marks

    async def _unread_here(self, a: ops.UnreadOf) -> ops.Unread:
        user_id, name = a.user_id, a.name
        rows, marks = await self._store.run(self._store.repo.unread, user_id, UNREAD_SCAN)
        counts: dict[str, int] = {}
        for conv, content in rows:
            m = MessageContent.unpack(content)
            if m.sender == name or m.kind in kinds.ACTING:
                continue
            text = ids.conversation_text(conv)
            counts[text] = counts.get(text, 0) + 1
        return ops.Unread(counts, {ids.conversation_text(c): q for c, q in marks.items()})
