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

from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids, kinds
from timpy.im.accounts import Identity
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.signals import Signals
from timpy.im.writer import Writer
from timpy.store.repository import Store
from timpy.store.rows import Copies, NewMessage
from timpy.wire.messages import KIND_BURN, KIND_BURNED, MessageContent, Receipt

BURN_SCAN = 1000  # messages a read receipt looks through for BURN messages
UNREAD_SCAN = 10_000  # inbox entries counted for unread counts (the newest)


class Receipts:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, replicator: Replicator, writer: Writer,
        signals: Signals, limits: Limits,
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._replicator = replicator
        self._writer = writer
        self._signals = signals
        self._limits = limits
        self.burned = 0  # BURN messages burned by this node (metrics, tests)
        peers.expose("receipt.conv", self._conv_here, "conversation")
        peers.expose("receipt.mark", self._mark_here, "user")
        peers.expose("receipt.get_mark", self._get_mark_here, "user")
        peers.expose("receipt.unread", self._unread_here, "user")

    async def receipt(self, who: Identity, device_id: bytes, conversation: str, seq: int, read: bool) -> None:
        conv = ids.parse_conversation(conversation)
        if not isinstance(seq, int) or seq <= 0:
            raise RequestError("a receipt names a sequence number of 1 or more", Code.BAD_REQUEST)
        await self._peers.at_owner(
            conv, "receipt.conv", self._conv_here, who.user_id, who.name, device_id, int(seq), bool(read), timeout=15.0
        )

    async def _conv_here(
        self, conv: bytes, user_id: bytes, name: str, device_id: bytes, seq: int, read: bool
    ) -> None:
        user_id, device_id = bytes(user_id), bytes(device_id)
        await self._replicator.ensure("conv", conv)
        if not await self._store.run(self._store.repo.is_member, conv, user_id):
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        seq = min(seq, await self._store.run(self._store.repo.conversation_head, conv))
        if seq <= 0:
            return
        members = await self._store.run(self._store.repo.conversation_members, conv)
        text = ids.conversation_text(conv)
        if read:
            before = await self._peers.at_owner(user_id, "receipt.get_mark", self._get_mark_here, conv)
            if seq <= before:
                return  # read already: marks never move back, and nobody is told again
            direct = len(members) == 2 and ids.direct_conversation(self._indexer, *members) == conv
            if direct:
                await self._burn(conv, text, members, user_id, str(name), max(before, seq - BURN_SCAN), seq)
            await self._peers.at_owner(user_id, "receipt.mark", self._mark_here, conv, seq)
        if len(members) <= self._limits.receipt_push_max_members:
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

    async def _get_mark_here(self, user_id: bytes, conv: bytes) -> int:
        marks = (await self._unread_rows(user_id, 0))[1]
        return marks.get(bytes(conv), 0)

    async def _mark_here(self, user_id: bytes, conv: bytes, seq: int) -> int:
        await self._replicator.ensure("user", user_id)
        before = await self._store.run(self._store.repo.mark_read, user_id, bytes(conv), int(seq))

        async def mark() -> Copies:
            return Copies(reads=[(user_id, bytes(conv), int(seq))])

        await self._replicator.to_replicas(user_id, mark)
        return before

    async def _unread_rows(self, user_id: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
        await self._replicator.ensure("user", user_id)
        return await self._store.run(self._store.repo.unread, user_id, limit)

    async def unread(self, who: Identity) -> tuple[dict[str, int], dict[str, int]]:
        """Unread messages per conversation, and the read marks, for ``who``."""
        counts, marks = await self._peers.at_owner(who.user_id, "receipt.unread", self._unread_here, who.name)
        return dict(counts), dict(marks)

    async def _unread_here(self, user_id: bytes, name: str) -> tuple[dict[str, int], dict[str, int]]:
        rows, marks = await self._unread_rows(user_id, UNREAD_SCAN)
        counts: dict[str, int] = {}
        for conv, content in rows:
            m = MessageContent.unpack(content)
            if m.sender == name or m.kind in kinds.ACTING:
                continue
            text = ids.conversation_text(conv)
            counts[text] = counts.get(text, 0) + 1
        return counts, {ids.conversation_text(c): q for c, q in marks.items()}
