"""Relayed peer channels: a channel to a peer nobody can dial, tunnelled
through a peer both sides reach (docs/nat.md).

The relay passes FWD control frames on between two of its channels; the
bytes inside are the frames of the end-to-end channel, so the relay sees only
ciphertext and forwards one hop at most.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

from timpy.cluster import nat
from timpy.cluster.channel import ChannelError, KeyMismatch
from timpy.cluster.nat import Path
from timpy.cluster.transport.base import HANDSHAKE_TIMEOUT, MAX_PEER_FRAME, Refused

if TYPE_CHECKING:
    from timpy.cluster.transport.tcp import TcpPeerTransport, _Peer

log = logging.getLogger("timpy.cluster")


class RelayStream:
    """A byte stream to ``peer`` tunnelled through the node at ``via``.

    Each ``send_all`` travels as one FWD control frame in our sealed channel to
    ``via``, which passes it on in its sealed channel to ``peer``; the bytes
    are the frames of the end-to-end peer channel, so the relay sees only
    ciphertext. Frames are whole in each chunk, so a chunk the relay drops
    (its queues are bounded) costs whole frames, never the framing."""

    CHUNK = MAX_PEER_FRAME - 4096

    def __init__(self, relays: Relays, via: str, peer: str, sid: int) -> None:
        self.relays, self.transport = relays, relays.transport
        self.via, self.peer, self.sid = via, peer, sid
        self._in_send, self._in = trio.open_memory_channel[bytes](1024)
        self._buffered = b""
        self.closed = False

    def feed(self, blob: bytes) -> None:
        if not blob:
            self._end()
            return
        try:
            self._in_send.send_nowait(blob)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.transport.stats.dropped += 1

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._in_send.close()
            self.relays.tunnels.pop((self.peer, self.sid), None)

    async def send_all(self, data: bytes) -> None:
        if self.closed or not self.transport._is_connected(self.via):
            raise trio.BrokenResourceError(f"the relay {self.via} is gone")
        for i in range(0, len(data), self.CHUNK):
            self.transport.send(self.via, nat.control(nat.FWD, self.peer, self.transport.address, self.sid,
                                                      data[i:i + self.CHUNK]))
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if not self._buffered:
            try:
                self._buffered = await self._in.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        data, self._buffered = self._buffered[:max_bytes], self._buffered[max_bytes:]
        return data

    async def aclose(self) -> None:
        if not self.closed and self.transport._is_connected(self.via):
            self.transport.send(self.via, nat.control(nat.FWD, self.peer, self.transport.address, self.sid, b""))
        self._end()
        await trio.lowlevel.checkpoint()


class Relays:
    """The relayed channels of one TCP transport: the tunnels through other
    peers that end here, dialling through a relay, and relaying for others."""

    def __init__(self, transport: TcpPeerTransport) -> None:
        self.transport = transport
        self.tunnels: dict[tuple[str, int], RelayStream] = {}

    def candidates(self, address: str) -> list[str]:
        """Peers that could relay to ``address``: live direct (TCP) channels, ours first."""
        t = self.transport
        direct = [a for a, p in t._peers.items()
                  if p.connected and a != address and p.path is not None and p.path.kind == "tcp"]
        return sorted(direct, key=lambda a: (a not in t._outbound, a))[:3]

    async def dial(self, peer: _Peer) -> bool:
        """Open the channel to ``peer`` through a relay; True once one ran (and ended)."""
        t = self.transport
        for via in self.candidates(peer.address):
            stream = RelayStream(self, via, peer.address, random.getrandbits(62) + 1)
            self.tunnels[(peer.address, stream.sid)] = stream
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    channel, node_id, reader = await t._handshake_out(stream)
            except (Refused, KeyMismatch, OSError, trio.TooSlowError, ChannelError, trio.BrokenResourceError,
                    EOFError) as exc:
                log.debug("relay to %s via %s failed: %s", peer.address, via, exc)
                await stream.aclose()
                continue
            if t.nat is not None and t.nat.ice:
                t.ice.spawn(t.ice.upgrade, peer)
            await t._serve(stream, channel, reader, peer, peer.address, node_id, Path("relay", via=via))
            return True
        return False

    def relay_gone(self, via: str) -> None:
        """A relay that is gone ends the channels through it."""
        for tunnel in [t for t in self.tunnels.values() if t.via == via]:
            tunnel.feed(b"")

    def on_forward(self, remote: str, payload: bytes, dst: str, src: str, sid: int, blob: bytes) -> None:
        """A FWD frame from ``remote``: ours to open, or to pass on one hop, or to refuse."""
        t = self.transport
        if dst == t.address:
            self._tunnel_in(remote, src, sid, blob)
        elif t.nat is not None and t.nat.relay and t._is_connected(dst) and src == remote:
            t.send(dst, payload)  # relay: sealed bytes we cannot open, one hop
            t.stats.relayed += 1
        elif blob:
            t._send_control(remote, nat.control(nat.NOFWD, dst, sid))

    def on_refused(self, peer: str, sid: int) -> None:
        """A NOFWD frame: the relay would not pass our tunnel on."""
        tunnel = self.tunnels.get((peer, sid))
        if tunnel is not None:
            tunnel.feed(b"")

    def _tunnel_in(self, via: str, src: str, sid: int, blob: bytes) -> None:
        t = self.transport
        tunnel = self.tunnels.get((src, sid))
        if tunnel is not None:
            tunnel.feed(blob)
        elif blob and t.nat is not None:  # a new relayed channel from src
            tunnel = RelayStream(self, via, src, sid)
            self.tunnels[(src, sid)] = tunnel
            tunnel.feed(blob)
            assert t._nursery is not None
            t._nursery.start_soon(t._accept, tunnel, f"{src} via {via}", Path("relay", via=via, inbound=True))
