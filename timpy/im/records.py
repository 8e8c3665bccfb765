"""Small versioned values kept per key at the key's owner: a user's roster and
presence status, the relation of two users (at the key of their 1:1
conversation). Stored sealed (``records`` table), changed under a lock per
record at the owner, copied to the key's replicas before the change returns
(embedded mode), and carried with their key by catch-up and backend moves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.store.repository import Store

CACHE_SIZE = 50_000


class Records:
    def __init__(self, store: Store, peers: Peers, replicator: Replicator) -> None:
        self._store = store
        self._peers = peers
        self._replicator = replicator
        self._locks: dict[tuple[bytes, str], trio.Lock] = {}
        # (key, kind) -> value, for records this node owns; cleared when the ring changes.
        self._cache: OrderedDict[tuple[bytes, str], Any] = OrderedDict()

    def forget_cache(self) -> None:
        """The ring changed: what another owner wrote meanwhile must be read again."""
        self._cache.clear()

    def _remember(self, key: tuple[bytes, str], value: Any) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def get(self, key: bytes, kind: str, space: str) -> Any:
        """At the key's owner: the record's value (None when there is none).
        ``space`` is the key's kind for catch-up: "user" or "conv"."""
        if (key, kind) in self._cache:
            return self._cache[(key, kind)]
        await self._replicator.ensure(space, key)
        found = await self._store.run(self._store.repo.get_record, key, kind)
        value = None if found is None else msgpack.unpackb(found[0], raw=False)
        self._remember((key, kind), value)
        return value

    async def get_many(self, keys: list[bytes], kind: str) -> dict[bytes, Any]:
        """Values of records here (no catch-up): for keys this node owns or holds."""
        missing = [k for k in keys if (k, kind) not in self._cache]
        if missing:
            found = await self._store.run(self._store.repo.get_records, missing, kind)
            for k in missing:
                raw = found.get(k)
                self._remember((k, kind), None if raw is None else msgpack.unpackb(raw, raw=False))
        return {k: self._cache.get((k, kind)) for k in keys}

    async def get_each(self, keys: list[bytes], kind: str, space: str) -> dict[bytes, Any]:
        """At the keys' owner: ``get`` for many keys, the ones not cached read
        in one storage call (each key caught up first, as ``get`` does)."""
        for key in keys:
            if (key, kind) not in self._cache:
                await self._replicator.ensure(space, key)
        return await self.get_many(keys, kind)

    def cached(self, key: bytes, kind: str) -> tuple[bool, Any]:
        """(known, value) without waiting."""
        if (key, kind) in self._cache:
            return True, self._cache[(key, kind)]
        return False, None

    async def update(self, key: bytes, kind: str, space: str, change: Callable[[Any], Any]) -> Any:
        """At the key's owner: apply ``change`` to the value (None when there is
        none) and store the result; a change that raises stores nothing."""
        lock = self._locks.setdefault((key, kind), trio.Lock())
        async with lock:
            await self._replicator.ensure(space, key)
            found = await self._store.run(self._store.repo.get_record, key, kind)
            old, version = (None, 0) if found is None else (msgpack.unpackb(found[0], raw=False), found[1])
            new = change(old)
            if new != old:
                await self._store.run(self._store.repo.put_record, key, kind, msgpack.packb(new), version)
                await self._replicate(key, kind)
            self._remember((key, kind), new)
        if not lock.statistics().tasks_waiting and not lock.locked():
            self._locks.pop((key, kind), None)
        return new

    async def _replicate(self, key: bytes, kind: str) -> None:
        await self._replicator.to_replicas(key, lambda: self._store.run(self._store.repo.record_copies, key, kind))
