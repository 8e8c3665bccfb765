"""Peer transports, one module each.

- ``base``: the ``PeerTransport`` interface and the values all share;
- ``memory``: ``MemoryNetwork`` and ``MemoryTransport``, an in-process network for tests;
- ``tcp``: ``TcpPeerTransport``, authenticated, encrypted channels over TCP;
- ``relay``: ``Relays``, channels tunnelled through a peer both sides reach;
- ``upgrade``: ``IceUpgrade``, moving a relayed channel onto a direct ICE path.
"""

from timpy.cluster.transport.base import (
    HANDSHAKE_TIMEOUT,
    MAX_PEER_FRAME,
    PeerTransport,
    Stream,
    TransportStats,
)
from timpy.cluster.transport.memory import MemoryNetwork, MemoryTransport
from timpy.cluster.transport.relay import RelayStream
from timpy.cluster.transport.tcp import NatSettings, TcpPeerTransport, nat_settings

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_PEER_FRAME",
    "MemoryNetwork",
    "MemoryTransport",
    "NatSettings",
    "PeerTransport",
    "RelayStream",
    "Stream",
    "TcpPeerTransport",
    "TransportStats",
    "nat_settings",
]
