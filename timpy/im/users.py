"""Users as the core knows them: who a request comes from (``Identity``), the
names nobody may take, and whether a user exists (``acct.exists``, at the
user's owner).

Features that act between two users (1:1 messages, roster, signalling,
threads) and groups (inviting a user) find the other user here, so no
feature imports another for it. Accounts (``timpy.im.accounts``) own the
rows; this module only reads whether one is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from timpy.cluster import catalog as ops
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids
from timpy.im.batches import BatchedCalls
from timpy.im.peers import Keeper, Peers
from timpy.store.repository import Store

SYSTEM_USER = "system"  # the sender of operators' messages; nobody can log in as it
RESERVED_NAMES = frozenset({SYSTEM_USER})
_LOOKUP_CHUNK = 500  # user ids one statement looks up at most


@dataclass(frozen=True)
class Identity:
    user_id: bytes
    name: str


class Users:
    def __init__(self, store: Store, indexer: BlindIndexer, peers: Peers, keeper: Keeper) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        # Lookups at the owner that arrive together (the first messages of a
        # flood of new senders) share one storage call and one statement.
        self._lookups: BatchedCalls[bytes, bool] = BatchedCalls(self._existing)
        peers.serve(ops.ACCT_EXISTS, self._exists_here, keeper)

    async def exists(self, user_id: bytes) -> bool:
        """Whether the user has an account (asked of its owner)."""
        return await self._peers.ask(ops.ACCT_EXISTS, ops.AccountExists(user_id), follow_moves=True)  # a read

    async def peer_of(self, who: Identity, name: str) -> tuple[str, bytes, bytes]:
        """Another user, for a 1:1 operation: (normalized name, user id, the
        key of the two users' conversation and relation); NO_SUCH_USER if absent."""
        peer = ids.normalize_name(name)
        pid = ids.user_id(self._indexer, peer)
        if peer in RESERVED_NAMES or not await self.exists(pid):
            raise RequestError(f"no such user: {peer}", Code.NO_SUCH_USER)
        return peer, pid, ids.direct_conversation(self._indexer, who.user_id, pid)

    async def _exists_here(self, a: ops.AccountExists) -> bool:
        """At the user's owner (caught up by the operation: the catalog declares it)."""
        return await self._lookups.call(a.user_id)

    async def _existing(self, user_ids: list[bytes]) -> list[bool]:
        unique = list(dict.fromkeys(user_ids))
        found: set[bytes] = set()
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            found |= await self._store.run(self._store.repo.existing_accounts, unique[start:start + _LOOKUP_CHUNK])
        return [u in found for u in user_ids]
