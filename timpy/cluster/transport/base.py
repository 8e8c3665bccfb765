"""The peer transport interface: what the cluster layer needs from a network.

A transport carries opaque, already-encoded frames between nodes named by
address. Membership traffic is best effort (SWIM tolerates loss), so ``send``
never waits: a frame that cannot go now is dropped and counted. Received
frames come out of ``incoming`` in arrival order; ``TcpPeerTransport`` hands
them to its ``on_receive`` instead, when one is set (``ClusterService``
sets it), in the task that read them.

Two implementations: ``TcpPeerTransport`` (authenticated, encrypted channels,
relayed or upgraded to ICE behind NAT) and ``MemoryTransport`` (an in-process
network that tests control: partitions, loss, delay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from timpy.cluster.nat import Path

MAX_PEER_FRAME = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0


@dataclass
class TransportStats:
    sent: int = 0
    dropped: int = 0
    refused: int = 0
    relayed: int = 0  # frames this node passed on for two other peers
    ice: int = 0  # channels that moved to an ICE path
    ice_failed: int = 0


class Refused(Exception):
    """The peer answered the handshake with a refusal."""


class PeerTransport(Protocol):
    """What ``ClusterService`` and the node use of a transport."""

    address: str  # what peers send to; final once ``run`` has started
    incoming: trio.MemoryReceiveChannel[bytes]
    stats: TransportStats

    def send(self, address: str, payload: bytes) -> None:
        """Queue one frame for ``address``; never blocks, drops (and counts) what cannot go."""
        ...

    async def run(self, task_status: trio.TaskStatus[None] = ...) -> None:
        """Serve until cancelled; ``started()`` once ``address`` is known."""
        ...

    def connected_peers(self) -> dict[str, str]:
        """address -> node id of peers with a live channel."""
        ...

    def paths(self) -> dict[str, Path]:
        """address -> the path the channel to that peer takes now."""
        ...


class Stream(Protocol):
    """A byte stream a peer channel runs over (TCP, a relay tunnel, QUIC)."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int = ...) -> bytes: ...

    async def aclose(self) -> None: ...
