"""Signalling messages (typing, and an application's own kinds): never stored,
delivered to the live terminals of a user or of a conversation's members.

A signal to a user is checked at the owner of the two users' 1:1
conversation, where their roster relation lives, so a blocked sender is
refused (BLOCKED) as for messages. A signal to a conversation is checked at
the conversation's owner: only members may send one, and it is pushed to
the other members (the sender's other terminals too), for conversations of
at most ``receipt_push_max_members`` members.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids
from timpy.im.peers import Peers
from timpy.im.records import Records
from timpy.im.replication import Replicator
from timpy.im.signal_routes import Signals
from timpy.im.users import Identity, Users
from timpy.store.repository import Store
from timpy.wire.messages import Signal

MAX_SIGNAL_DATA = 4096
_KIND_RE = re.compile(r"^[a-z0-9_.\-]{1,32}$")


class Signalling:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, replicator: Replicator, records: Records,
        users: Users, signals: Signals, limits: Callable[[], Limits],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._replicator = replicator
        self._records = records
        self._users = users
        self._signals = signals
        self._limits = limits
        peers.serve(ops.SIGNAL_DIRECT, self._direct_here)
        peers.serve(ops.SIGNAL_CONV, self._conv_here, replicator)

    async def send(self, who: Identity, device_id: bytes, to: str, conversation: str, kind: str, data: bytes) -> None:
        if not _KIND_RE.match(kind or ""):
            raise RequestError("a signal kind has 1 to 32 of a-z, 0-9, '_', '.', '-' (e.g. typing)", Code.BAD_REQUEST)
        if len(data) > MAX_SIGNAL_DATA:
            raise RequestError(f"signal data of {len(data)} bytes exceeds {MAX_SIGNAL_DATA}", Code.BODY_TOO_LARGE)
        if to:
            peer, pid, pair = await self._users.peer_of(who, to)
            signal = Signal(kind, who.name, data, to=peer)
            await self._peers.ask(ops.SIGNAL_DIRECT, ops.SignalDirect(pair, who.user_id, device_id, pid, signal))
        elif conversation:
            conv = ids.parse_conversation(conversation)
            signal = Signal(kind, who.name, data, conversation=conversation)
            await self._peers.ask(ops.SIGNAL_CONV, ops.SignalConv(conv, who.user_id, device_id, signal))
        else:
            raise RequestError("a signal names a user (to) or a conversation", Code.BAD_REQUEST)

    async def _direct_here(self, a: ops.SignalDirect) -> None:
        relation = await self._records.get(a.pair, "pair", "conv")
        if relation and any(bytes(b) == a.sender_id for _, b in relation["blocked_ids"]):
            raise RequestError("this user does not accept your messages", Code.BLOCKED)
        self._signals.push({a.sender_id, a.peer_id}, a.signal, skip=(a.sender_id, a.device_id))

    async def _conv_here(self, a: ops.SignalConv) -> None:
        members = await self._store.run(self._store.repo.conversation_members, a.conv_id)
        if a.sender_id not in members:
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        if len(members) <= self._limits().receipt_push_max_members:
            self._signals.push(members, a.signal, skip=(a.sender_id, a.device_id))
