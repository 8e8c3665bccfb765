"""The TCP peer transport: persistent, authenticated, encrypted channels to
peers (``timpy.cluster.channel``) over TCP, relayed (``relay``) or moved to
ICE (``upgrade``) behind NAT.

Membership traffic is best effort (SWIM tolerates loss), so ``send`` never
waits: each peer has a bounded queue, and a message for a full queue, or for a
peer in reconnection backoff, is dropped and counted.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial

import msgpack
import nacl.signing
import trio
import trio_asyncio

from timpy.cluster import nat
from timpy.cluster.channel import (
    VERSION,
    ChannelError,
    Initiator,
    KeyMismatch,
    Responder,
    SecureChannel,
)
from timpy.cluster.ice import IceServers
from timpy.cluster.nat import Path
from timpy.cluster.transport.base import (
    HANDSHAKE_TIMEOUT,
    MAX_PEER_FRAME,
    Refused,
    Stream,
    TransportStats,
)
from timpy.cluster.transport.relay import Relays, RelayStream
from timpy.cluster.transport.upgrade import IceUpgrade
from timpy.config import ClusterConfig, parse_hostport
from timpy.crypto.keys import ClusterKeys
from timpy.errors import ProtocolError
from timpy.wire.framing import FrameDecoder, frame_bytes

log = logging.getLogger("timpy.cluster")

@dataclass
class NatSettings:
    """NAT traversal for one transport (from the ``[cluster]`` table)."""

    servers: IceServers = field(default_factory=IceServers)
    ice: bool = True  # try ICE to upgrade a relayed path
    relay: bool = True  # relay through a peer when nothing direct works
    ice_timeout: float = 10.0  # seconds for one ICE negotiation
    upgrade_interval: float = 60.0  # seconds between ICE attempts while relayed
    unreachable_for: float = 300.0  # after a failed TCP dial, go straight to a relay for this long


def nat_settings(cc: ClusterConfig) -> NatSettings | None:
    """The transport's NAT settings from the ``[cluster]`` table; None when ``nat = false``."""
    if not cc.nat:
        return None
    servers = IceServers(
        stun=parse_hostport(cc.stun, "cluster.stun") if cc.stun else None,
        turn=parse_hostport(cc.turn, "cluster.turn") if cc.turn else None,
        turn_username=cc.turn_username,
        turn_password=cc.turn_password,
        turn_transport=cc.turn_transport,
    )
    return NatSettings(servers, ice=cc.ice, ice_timeout=cc.ice_timeout, upgrade_interval=cc.upgrade_interval)


@dataclass(eq=False)
class _Peer:
    address: str
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    connected: bool = False
    node_id: str = ""
    path: Path | None = None
    link: trio.CancelScope | None = None  # the channel that writes to this peer now
    upgrading: bool = False


REDIAL_CAP = 2.0  # seconds between dials of a peer that failed, at most (times 0.5 to 1.5)
# A peer's data left unacknowledged this long closes the channel (Linux TCP_USER_TIMEOUT), so it is dialled
# again: across a network split TCP's own retransmissions back off to tens of seconds, and a channel kept
# open through a 30 s split carried nothing for about 26 s after the heal.
UNACKED_LIMIT_MS = 4000


def _bound_unacked(stream: trio.SocketStream) -> None:
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        with suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKED_LIMIT_MS)


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


@dataclass
class TcpPeerTransport:
    """Persistent channels to peers, each behind the handshake of
    ``timpy.cluster.channel``; a node without the cluster key is refused and
    the refusal is logged by both sides.

    A channel runs over direct TCP when it can. With ``nat`` set, a peer that
    cannot be dialled is reached through a relay (a peer connected to both),
    and from there the two try ICE to find a direct UDP path, over which the
    channel runs inside QUIC (docs/nat.md). Every node answers STUN binding
    requests on its peer port (UDP), so nodes behind NAT learn their
    server-reflexive address from any reachable peer."""

    keys: ClusterKeys
    identity: nacl.signing.SigningKey
    listen: str = "127.0.0.1:0"
    queue: int = 256
    address: str = ""  # what peers dial: ``advertise`` if given, else the bound listen address
    advertise: str | None = None
    nat: NatSettings | None = None
    stats: TransportStats = field(default_factory=TransportStats)
    # Set by the cluster service: each frame received goes to it in the task that read it, in the
    # order that peer sent them, instead of through ``incoming`` and a task of the service's.
    on_receive: Callable[[bytes], None] | None = None

    def __post_init__(self) -> None:
        self._incoming_send, self.incoming = trio.open_memory_channel[bytes](4096)
        self._peers: dict[str, _Peer] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._unreachable: dict[str, float] = {}  # address -> until when TCP is not tried
        self.relays = Relays(self)
        self.ice = IceUpgrade(self)
        self._outbound: set[str] = set()  # peers we reached by dialling TCP (they see our address)
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.nat is not None:
            async with trio_asyncio.open_loop() as loop:  # hosts aioice (asyncio) for the transport's lifetime
                self.ice.loop = loop
                await self._run(task_status)
        else:
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        host, port = parse_hostport(self.listen, "peer listen address")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await nursery.start(partial(trio.serve_tcp, self._accept_tcp, port, host=host))
            bound = listeners[0].socket.getsockname()
            self.address = self.advertise or f"{host}:{bound[1]}"
            if self.nat is not None:
                await nursery.start(self._stun_responder, host, bound[1])
                await nursery.start(self.ice.worker)
            task_status.started()

    async def _stun_responder(self, host: str, port: int, task_status: trio.TaskStatus[None]) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            try:
                await sock.bind((host or "0.0.0.0", port))
            except OSError as exc:
                log.warning("no STUN answers on udp %s:%d: %s", host, port, exc)
                task_status.started()
                return
            task_status.started()
            while True:
                try:
                    data, addr = await sock.recvfrom(2048)
                except OSError:
                    continue
                reply = nat.stun_reply(data, addr[:2])
                if reply is not None:
                    with suppress(OSError):
                        await sock.sendto(reply, addr)

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

    def _is_connected(self, address: str) -> bool:
        peer = self._peers.get(address)
        return peer is not None and peer.connected

    def _new_peer(self, address: str) -> _Peer:
        send, receive = trio.open_memory_channel[bytes](self.queue)
        peer = _Peer(address, send, receive)
        self._peers[address] = peer
        return peer

    def _failed(self, peer: _Peer, why: str) -> None:
        if self._peers.get(peer.address) is peer:
            del self._peers[peer.address]
        peer.connected, peer.link = False, None
        self._outbound.discard(peer.address)
        self.relays.relay_gone(peer.address)
        backoff = self._backoff.setdefault(peer.address, _Backoff())
        backoff.failures += 1
        # Capped low: after a partition heals, the next dial is what reunites the sides (a 30 s cap kept
        # them apart for up to 45 s after a 30 s split; one refused or dropped SYN every 2 s costs nothing).
        delay = min(REDIAL_CAP, 0.2 * math.pow(2, backoff.failures - 1)) * random.uniform(0.5, 1.5)
        backoff.until = trio.current_time() + delay
        log.debug("peer %s: %s; retrying in %.1f s", peer.address, why, delay)

    async def _handshake_out(self, stream: Stream) -> tuple[SecureChannel, str, _FrameReader]:
        """Run the initiator's handshake; raises Refused, KeyMismatch or a connection error."""
        reader = _FrameReader(stream)
        initiator = Initiator(self.keys, self.identity)
        await stream.send_all(frame_bytes(initiator.start()))
        reply = await reader.read()
        refusal = _refusal(reply)
        if refusal is not None:
            raise Refused(refusal)
        channel, who = initiator.finish(reply)
        await stream.send_all(frame_bytes(channel.seal(self.address.encode())))
        return channel, who.node_id, reader

    async def _dial(self, peer: _Peer) -> None:
        why = "unreachable"
        if trio.current_time() >= self._unreachable.get(peer.address, 0.0):
            host, port = parse_hostport(peer.address, "peer address")
            stream = None
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
                    _bound_unacked(stream)
                    channel, node_id, reader = await self._handshake_out(stream)
            except (Refused, KeyMismatch) as exc:
                self.stats.refused += 1
                log.warning("peer %s refused us: %s", peer.address, exc)
                if stream is not None:
                    await stream.aclose()
                self._failed(peer, "refused")
                return
            except (OSError, trio.TooSlowError, ChannelError, trio.BrokenResourceError, EOFError) as exc:
                if stream is not None:
                    await stream.aclose()
                why = f"{type(exc).__name__}: {exc}"
                if self.nat is not None and stream is None and not _refused_only(exc):
                    # no route, or no answer: behind NAT or a firewall; go to a relay for a while.
                    # (Refused means the host is there, maybe restarting: TCP is tried again next time.)
                    self._unreachable[peer.address] = trio.current_time() + self.nat.unreachable_for
            else:
                self._outbound.add(peer.address)
                await self._serve(stream, channel, reader, peer, peer.address, node_id, Path("tcp"))
                return
        if self.nat is not None and self.nat.relay and await self.relays.dial(peer):
            return
        self._failed(peer, why)

    # --- receiving --------------------------------------------------------

    async def _accept_tcp(self, stream: trio.SocketStream) -> None:
        _bound_unacked(stream)
        remote = "?"
        with suppress(OSError):
            remote = "{}:{}".format(*stream.socket.getpeername()[:2])
        await self._accept(stream, remote, Path("tcp", inbound=True))

    async def _accept(self, stream: Stream, remote: str, path: Path) -> None:
        reader = _FrameReader(stream)
        try:
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
        if isinstance(stream, RelayStream) and address != stream.peer:
            log.warning("a relayed peer at %s says it is %s; dropping it", stream.peer, address)
            await stream.aclose()
            return
        peer = self._peers.get(address)
        if peer is None or not peer.connected or peer.path is None or path.rank > peer.path.rank:
            # no channel of ours to that address yet, or a worse one: answer through this one
            peer = peer or self._new_peer(address)
            self._backoff.pop(address, None)
            await self._serve(stream, channel, reader, peer, address, who.node_id, path)
        else:
            await self._serve(stream, channel, reader, None, address, who.node_id, path)  # receive only

    async def _serve(
        self, stream: Stream, channel: SecureChannel, reader: _FrameReader, peer: _Peer | None,
        remote: str, node_id: str, path: Path,
    ) -> None:
        async def read() -> None:
            while True:
                frame = await reader.read()
                try:
                    payload = channel.open(frame)
                except ChannelError as exc:
                    raise ChannelError(f"dropping the channel: {exc}") from None
                if payload[:1] == nat.CONTROL:
                    self._control(remote, payload)
                    continue
                if self.on_receive is not None:
                    self.on_receive(payload)
                    continue
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
                frames = []
                for p in batch:
                    sealed = channel.seal(p)
                    if len(sealed) > MAX_PEER_FRAME:  # the peer would drop the channel: this one payload is lost
                        self.stats.dropped += 1
                        log.warning("a frame of %d bytes for peer %s is over the limit of %d; dropped",
                                    len(sealed), remote, MAX_PEER_FRAME)
                        continue
                    frames.append(frame_bytes(sealed))
                if frames:
                    await stream.send_all(b"".join(frames))

        try:
            async with trio.open_nursery() as nursery:
                if peer is not None:
                    previous, peer.link = peer.link, nursery.cancel_scope
                    if previous is not None and peer.path is not None and path.rank > peer.path.rank:
                        # a better path: the old channel ends; equal ones both write, as two TCP dials do
                        log.info("peer %s: %s replaces %s", remote, path.describe(), peer.path.describe())
                        previous.cancel()
                    peer.connected, peer.node_id, peer.path = True, node_id, path

                async def guarded(fn) -> None:  # noqa: ANN001
                    try:
                        await fn()
                    except (OSError, EOFError, ChannelError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if peer is not None and peer.link is nursery.cancel_scope:
                            self._failed(peer, f"channel closed: {exc}")
                    nursery.cancel_scope.cancel()

                nursery.start_soon(guarded, read)
                if peer is not None:
                    nursery.start_soon(guarded, write)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # --- control frames: relaying and ICE signalling ----------------------

    def _send_control(self, address: str, payload: bytes) -> None:
        peer = self._peers.get(address)
        if peer is not None and peer.connected:
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                peer.send.send_nowait(payload)

    def _control(self, remote: str, payload: bytes) -> None:
        try:
            msg = nat.parse_control(payload)
        except nat.ControlError as exc:
            log.debug("peer %s: %s", remote, exc)
            return
        kind = msg[0]
        if kind == nat.FWD:
            _, dst, src, sid, blob = msg
            self.relays.on_forward(remote, payload, dst, src, sid, blob)
        elif kind == nat.NOFWD:
            self.relays.on_refused(msg[1], msg[2])
        else:
            self.ice.on_control(remote, msg)

    # --- what status shows --------------------------------------------------

    def connected_peers(self) -> dict[str, str]:
        """address -> node id of peers with a live channel."""
        return {a: p.node_id for a, p in self._peers.items() if p.connected}

    def paths(self) -> dict[str, Path]:
        """address -> the path the channel to that peer takes now."""
        return {a: p.path for a, p in self._peers.items() if p.connected and p.path is not None}


class _FrameReader:
    """Length-prefixed frames from a stream, one at a time."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(MAX_PEER_FRAME)
        self._ready: deque[bytes] = deque()

    async def read(self) -> bytes:
        while not self._ready:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed")
            try:
                self._ready.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                # A length over the limit, from anyone who reached the port (the
                # handshake reads frames too): the end of this connection only.
                raise ChannelError(exc.text) from None
        return self._ready.popleft()


def _refused_only(exc: BaseException) -> bool:
    """True when every connection attempt was actively refused (the host answered)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, BaseExceptionGroup) else None
    errors = list(cause.exceptions) if cause is not None else [exc]
    return all(isinstance(e, ConnectionRefusedError) for e in errors)


def _refusal(frame: bytes) -> str | None:
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except Exception:
        return None
    if isinstance(msg, list) and len(msg) == 3 and msg[1] == "refused":
        return str(msg[2])
    return None
