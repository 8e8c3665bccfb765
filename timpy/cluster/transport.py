"""Peer transports in trio: authenticated, encrypted TCP channels, and an
in-memory network with the same interface for tests.

Membership traffic is best effort (SWIM tolerates loss), so ``send`` never
waits: each peer has a bounded queue, and a message for a full queue, or for a
peer in reconnection backoff, is dropped and counted.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import msgpack
import nacl.signing
import trio

from timpy.cluster.channel import (
    VERSION,
    ChannelError,
    Initiator,
    KeyMismatch,
    Responder,
    SecureChannel,
)
from timpy.config import parse_hostport
from timpy.crypto.keys import ClusterKeys
from timpy.wire.framing import FrameDecoder, frame_bytes

log = logging.getLogger("timpy.cluster")

MAX_PEER_FRAME = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0


@dataclass
class TransportStats:
    sent: int = 0
    dropped: int = 0
    refused: int = 0


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


@dataclass(eq=False)
class _Peer:
    address: str
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    connected: bool = False
    node_id: str = ""


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


@dataclass
class TcpPeerTransport:
    """Persistent TCP channels to peers, each behind the handshake of
    ``timpy.cluster.channel``; a node without the cluster key is refused and
    the refusal is logged by both sides."""

    keys: ClusterKeys
    identity: nacl.signing.SigningKey
    listen: str = "127.0.0.1:0"
    queue: int = 256
    address: str = ""  # what peers dial: ``advertise`` if given, else the bound listen address
    advertise: str | None = None
    stats: TransportStats = field(default_factory=TransportStats)

    def __post_init__(self) -> None:
        self._incoming_send, self.incoming = trio.open_memory_channel[bytes](4096)
        self._peers: dict[str, _Peer] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_hostport(self.listen, "peer listen address")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await nursery.start(partial(trio.serve_tcp, self._accept, port, host=host))
            bound = listeners[0].socket.getsockname()
            self.address = self.advertise or f"{host}:{bound[1]}"
            task_status.started()

    # --- sending ----------------------------------------------------------

    def send(self, address: str, payload: bytes) -> None:
        peer = self._peers.get(address)
        if peer is None:
            backoff = self._backoff.get(address)
            if backoff is not None and trio.current_time() < backoff.until:
                self.stats.dropped += 1
                return
            peer = self._new_peer(address)
            assert self._nursery is not None
            self._nursery.start_soon(self._dial, peer)
        try:
            peer.send.send_nowait(payload)
            self.stats.sent += 1
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.stats.dropped += 1

    def _new_peer(self, address: str) -> _Peer:
        send, receive = trio.open_memory_channel[bytes](self.queue)
        peer = _Peer(address, send, receive)
        self._peers[address] = peer
        return peer

    def _failed(self, peer: _Peer, why: str) -> None:
        if self._peers.get(peer.address) is peer:
            del self._peers[peer.address]
        backoff = self._backoff.setdefault(peer.address, _Backoff())
        backoff.failures += 1
        delay = min(30.0, 0.2 * math.pow(2, backoff.failures - 1)) * random.uniform(0.5, 1.5)
        backoff.until = trio.current_time() + delay
        log.debug("peer %s: %s; retrying in %.1f s", peer.address, why, delay)

    async def _dial(self, peer: _Peer) -> None:
        host, port = parse_hostport(peer.address, "peer address")
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await trio.open_tcp_stream(host, port)
                reader = _FrameReader(stream)
                initiator = Initiator(self.keys, self.identity)
                await stream.send_all(frame_bytes(initiator.start()))
                reply = await reader.read()
                refusal = _refusal(reply)
                if refusal is not None:
                    self.stats.refused += 1
                    log.warning("peer %s refused us: %s", peer.address, refusal)
                    await stream.aclose()
                    self._failed(peer, "refused")
                    return
                channel, who = initiator.finish(reply)
                await stream.send_all(frame_bytes(channel.seal(self.address.encode())))
        except KeyMismatch as exc:
            self.stats.refused += 1
            log.warning("refused peer %s: %s", peer.address, exc)
            self._failed(peer, "key mismatch")
            return
        except (OSError, trio.TooSlowError, ChannelError, trio.BrokenResourceError, EOFError) as exc:
            self._failed(peer, f"{type(exc).__name__}: {exc}")
            return
        self._backoff.pop(peer.address, None)
        peer.connected, peer.node_id = True, who.node_id
        await self._serve(stream, channel, reader, peer)

    # --- receiving --------------------------------------------------------

    async def _accept(self, stream: trio.SocketStream) -> None:
        reader = _FrameReader(stream)
        remote = "?"
        try:
            remote = "{}:{}".format(*stream.socket.getpeername()[:2])
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                hello = await reader.read()
                try:
                    welcome, channel, who = Responder(self.keys, self.identity).accept(hello)
                except KeyMismatch as exc:
                    self.stats.refused += 1
                    log.warning("refused a peer connecting from %s: %s", remote, exc)
                    await stream.send_all(frame_bytes(msgpack.packb([VERSION, "refused", "cluster key mismatch"])))
                    await stream.aclose()
                    return
                await stream.send_all(frame_bytes(welcome))
                address = channel.open(await reader.read()).decode()
        except (OSError, trio.TooSlowError, ChannelError, trio.BrokenResourceError, EOFError, UnicodeDecodeError) as exc:
            log.debug("peer connection from %s failed: %s", remote, exc)
            await stream.aclose()
            return
        peer = self._peers.get(address)
        if peer is None or not peer.connected:
            # no channel of ours to that address yet: answer through this one
            peer = peer or self._new_peer(address)
            peer.connected, peer.node_id = True, who.node_id
            self._backoff.pop(address, None)
            await self._serve(stream, channel, reader, peer)
        else:
            await self._serve(stream, channel, reader, None)  # receive only

    async def _serve(self, stream: trio.SocketStream, channel: SecureChannel, reader: _FrameReader, peer: _Peer | None) -> None:
        async def read() -> None:
            while True:
                frame = await reader.read()
                try:
                    payload = channel.open(frame)
                except ChannelError as exc:
                    raise ChannelError(f"dropping the channel: {exc}") from None
                try:
                    self._incoming_send.send_nowait(payload)
                except trio.WouldBlock:
                    self.stats.dropped += 1

        async def write() -> None:
            assert peer is not None
            async for payload in peer.receive:
                batch = [payload]
                while len(batch) < 64:
                    try:
                        batch.append(peer.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await stream.send_all(b"".join(frame_bytes(channel.seal(p)) for p in batch))

        try:
            async with trio.open_nursery() as nursery:

                async def guarded(fn) -> None:  # noqa: ANN001
                    try:
                        await fn()
                    except (OSError, EOFError, ChannelError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if peer is not None:
                            self._failed(peer, f"channel closed: {exc}")
                    nursery.cancel_scope.cancel()

                nursery.start_soon(guarded, read)
                if peer is not None:
                    nursery.start_soon(guarded, write)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def connected_peers(self) -> dict[str, str]:
        """address -> node id of peers with a live channel."""
        return {a: p.node_id for a, p in self._peers.items() if p.connected}


class _FrameReader:
    """Length-prefixed frames from a stream, one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(MAX_PEER_FRAME)
        self._ready: deque[bytes] = deque()

    async def read(self) -> bytes:
        while not self._ready:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed")
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()


def _refusal(frame: bytes) -> str | None:
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except Exception:
        return None
    if isinstance(msg, list) and len(msg) == 3 and msg[1] == "refused":
        return str(msg[2])
    return None
