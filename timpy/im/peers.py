"""What the messaging domain needs from the cluster: where a key lives and a
way to ask that node. A standalone node is a cluster of one, where every key
is local and nothing goes over the network."""

from __future__ import annotations

from typing import Any

from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.rpc import Call, Rpc


class Peers:
    def __init__(self, placement: Placement, rpc: Rpc | None) -> None:
        self.placement = placement
        self.rpc = rpc

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
        return await self._rpc().call(self.placement.address(node_id), method, *args, timeout=timeout)

    def start_call(self, node_id: str, method: str, *args: Any) -> Call:
        return self._rpc().start_call(self.placement.address(node_id), method, *args)

    def notify(self, node_id: str, method: str, *args: Any) -> None:
        if self.rpc is not None and node_id in self.placement.addresses:
            self.rpc.notify(self.placement.address(node_id), method, *args)

    def others(self) -> list[str]:
        return sorted(self.placement.members - {self.self_id})
