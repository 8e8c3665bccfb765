"""An in-memory network with the transport interface, for in-process clusters."""

from __future__ import annotations

import random

import trio

from timpy.cluster.nat import Path
from timpy.cluster.transport.base import TransportStats


class MemoryNetwork:
    """Addresses to inboxes, for in-process clusters."""

    def __init__(self, loss: float = 0.0, seed: int = 0) -> None:
        self.inboxes: dict[str, trio.MemorySendChannel[bytes]] = {}
        self.loss = loss
        self.rng = random.Random(seed)
        self.down: set[str] = set()


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: str, queue: int = 1024) -> None:
        self.network = network
        self.address = address
        send, self.incoming = trio.open_memory_channel[bytes](queue)
        network.inboxes[address] = send
        self.stats = TransportStats()

    def send(self, address: str, payload: bytes) -> None:
        inbox = self.network.inboxes.get(address)
        if inbox is None or address in self.network.down or self.address in self.network.down:
            self.stats.dropped += 1
            return
        if self.network.rng.random() < self.network.loss:
            self.stats.dropped += 1
            return
        try:
            inbox.send_nowait(payload)
            self.stats.sent += 1
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats.dropped += 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def connected_peers(self) -> dict[str, str]:
        return {}

    def paths(self) -> dict[str, Path]:
        return {}
