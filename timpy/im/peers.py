"""What the messaging domain needs from the cluster: where a key lives, a
way to ask that node, and whether this node may act for a key now (its
ownership lease, ``timpy.cluster.ownership``). A standalone node is a cluster
of one, where every key is local and nothing goes over the network."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from timpy.cluster.ownership import Epoch
from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.rpc import Call, Rpc
from timpy.errors import Code, TimpyError


class _Ownership(Protocol):
    @property
    def epoch(self) -> Epoch: ...

    def require_lease(self) -> None: ...

    async def wait_for_lease(self, timeout: float = ...) -> None: ...

    def cut_off(self) -> str | None: ...

    def applying(self, epoch_number: int) -> AbstractAsyncContextManager[None]: ...

    async def fence(self, epoch: Epoch) -> None: ...


class Peers:
    def __init__(self, placement: Placement, rpc: Rpc | None, ownership: _Ownership | None = None) -> None:
        self.placement = placement
        self.rpc = rpc
        self.ownership = ownership

    def require_write(self) -> None:
        """Raise UNAVAILABLE (saying how many members this node reaches) unless
        a majority of the voting members confirms this node's lease. A
        standalone node is its own majority."""
        if self.ownership is not None:
            self.ownership.require_lease()

    async def await_write(self) -> None:
        """As ``require_write``, but while the ring is changing wait a few
        seconds for the lease rather than refuse."""
        if self.ownership is not None:
            await self.ownership.wait_for_lease()

    @property
    def epoch_number(self) -> int:
        return self.ownership.epoch.number if self.ownership is not None else 0

    @classmethod
    def standalone(cls, node_id: str) -> Peers:
        return cls(Placement(node_id, "", ReplicationConfig()), None)

    @property
    def self_id(self) -> str:
        return self.placement.self_id

    def owner(self, key: bytes) -> str:
        return self.placement.owner(key)

    def is_local(self, key: bytes) -> bool:
        return self.rpc is None or self.placement.is_local(key)

    def _rpc(self) -> Rpc:
        assert self.rpc is not None, "a standalone node has no peers"
        return self.rpc

    async def call(self, node_id: str, method: str, *args: Any, timeout: float = 5.0) -> Any:
        await self.await_write()  # a node cut off from the majority refuses at once rather than wait on peers
        call = self._rpc().start_call(self.placement.address(node_id), method, *args)
        # ... and stops waiting as soon as it is cut off while the call is out
        # (a split mid-request: the lease runs out within its bound).
        return await call.result(timeout, self.ownership.cut_off if self.ownership is not None else None)

    def start_call(self, node_id: str, method: str, *args: Any) -> Call:
        return self._rpc().start_call(self.placement.address(node_id), method, *args)

    def notify(self, node_id: str, method: str, *args: Any) -> None:
        if self.rpc is not None and node_id in self.placement.addresses:
            self.rpc.notify(self.placement.address(node_id), method, *args)

    def others(self) -> list[str]:
        return sorted(self.placement.members - {self.self_id})

    # --- serving a key at its owner -------------------------------------------

    def expose(self, method: str, here: Any, what: str = "key") -> None:
        """Serve ``method`` to other nodes as ``here(key, *args)``, at the key's
        owner only (a node that is not the owner any more says so: retry)."""
        if self.rpc is None:
            return

        def handler(key: bytes, *args: Any) -> Any:
            key = bytes(key)
            if not self.is_local(key):
                raise TimpyError(f"this node does not own that {what} (the cluster is changing); retry", Code.UNAVAILABLE)
            self.require_write()
            return here(key, *args)

        self.rpc.register(method, handler)

    async def at_owner(self, key: bytes, method: str, here: Any, *args: Any, timeout: float = 5.0) -> Any:
        """Run ``here(key, *args)`` on the key's owner: directly when that is
        this node, else through ``method`` (see ``expose``)."""
        owner = self.owner(key)
        if owner == self.self_id or self.rpc is None:
            await self.await_write()
            return await here(key, *args)
        return await self.call(owner, method, key, *args, timeout=timeout)

    def by_owner(self, keys: Any) -> dict[str, list[bytes]]:
        """Keys grouped by their owner node."""
        out: dict[str, list[bytes]] = {}
        for key in keys:
            out.setdefault(self.owner(key), []).append(key)
        return out
