"""Peer transports in trio: authenticated, encrypted TCP channels, and an
in-memory network with the same interface for tests.

Membership traffic is best effort (SWIM tolerates loss), so ``send`` never
waits: each peer has a bounded queue, and a message for a full queue, or for a
peer in reconnection backoff, is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

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
from timpy.cluster.ice import IceFailed, IceOffer, IceServers, IceSession, QuicStream
from timpy.cluster.nat import Path
from timpy.config import ClusterConfig, parse_hostport
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
    relayed: int = 0  # frames this node passed on for two other peers
    ice: int = 0  # channels that moved to an ICE path
    ice_failed: int = 0


class Stream(Protocol):
    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int = ...) -> bytes: ...

    async def aclose(self) -> None: ...


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


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


class _Refused(Exception):
    """The peer answered the handshake with a refusal."""


class RelayStream:
    """A byte stream to ``peer`` tunnelled through the node at ``via``.

    Each ``send_all`` travels as one FWD control frame in our sealed channel to
    ``via``, which passes it on in its sealed channel to ``peer``; the bytes
    are the frames of the end-to-end peer channel, so the relay sees only
    ciphertext. Frames are whole in each chunk, so a chunk the relay drops
    (its queues are bounded) costs whole frames, never the framing."""

    CHUNK = MAX_PEER_FRAME - 4096

    def __init__(self, transport: TcpPeerTransport, via: str, peer: str, sid: int) -> None:
        self.transport, self.via, self.peer, self.sid = transport, via, peer, sid
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
            self.transport._tunnels.pop((self.peer, self.sid), None)

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

    def __post_init__(self) -> None:
        self._incoming_send, self.incoming = trio.open_memory_channel[bytes](4096)
        self._peers: dict[str, _Peer] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._unreachable: dict[str, float] = {}  # address -> until when TCP is not tried
        self._tunnels: dict[tuple[str, int], RelayStream] = {}
        self._answers: dict[tuple[str, int], trio.MemorySendChannel[IceOffer | str]] = {}
        self._ice_running: set[str] = set()
        self._outbound: set[str] = set()  # peers we reached by dialling TCP (they see our address)
        self._nursery: trio.Nursery | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.nat is not None:
            async with trio_asyncio.open_loop() as loop:  # hosts aioice (asyncio) for the transport's lifetime
                self._loop = loop
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
                await nursery.start(self._ice_worker)
            task_status.started()

    async def _ice_worker(self, task_status: trio.TaskStatus[None]) -> None:
        """Starts the ICE tasks. A trio task inherits the context of the task that
        starts it, and trio-asyncio finds its loop there (asyncio callbacks too),
        so every task that touches aioice is started from here, inside the loop."""
        jobs_send, jobs = trio.open_memory_channel[tuple](math.inf)
        self._ice_jobs = jobs_send
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for fn, args in jobs:
                nursery.start_soon(fn, *args)

    def _spawn_ice(self, fn, *args) -> None:  # noqa: ANN001
        self._ice_jobs.send_nowait((fn, args))

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
        for tunnel in [t for t in self._tunnels.values() if t.via == peer.address]:
            tunnel.feed(b"")  # a relay that is gone ends the channels through it
        backoff = self._backoff.setdefault(peer.address, _Backoff())
        backoff.failures += 1
        delay = min(30.0, 0.2 * math.pow(2, backoff.failures - 1)) * random.uniform(0.5, 1.5)
        backoff.until = trio.current_time() + delay
        log.debug("peer %s: %s; retrying in %.1f s", peer.address, why, delay)

    async def _handshake_out(self, stream: Stream) -> tuple[SecureChannel, str, _FrameReader]:
        """Run the initiator's handshake; raises _Refused, KeyMismatch or a connection error."""
        reader = _FrameReader(stream)
        initiator = Initiator(self.keys, self.identity)
        await stream.send_all(frame_bytes(initiator.start()))
        reply = await reader.read()
        refusal = _refusal(reply)
        if refusal is not None:
            raise _Refused(refusal)
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
                    channel, node_id, reader = await self._handshake_out(stream)
            except (_Refused, KeyMismatch) as exc:
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
        if self.nat is not None and self.nat.relay and await self._dial_relay(peer):
            return
        self._failed(peer, why)

    def _relays_for(self, address: str) -> list[str]:
        """Peers that could relay to ``address``: live direct (TCP) channels, ours first."""
        direct = [a for a, p in self._peers.items()
                  if p.connected and a != address and p.path is not None and p.path.kind == "tcp"]
        return sorted(direct, key=lambda a: (a not in self._outbound, a))[:3]

    async def _dial_relay(self, peer: _Peer) -> bool:
        for via in self._relays_for(peer.address):
            stream = RelayStream(self, via, peer.address, random.getrandbits(62) + 1)
            self._tunnels[(peer.address, stream.sid)] = stream
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    channel, node_id, reader = await self._handshake_out(stream)
            except (_Refused, KeyMismatch, OSError, trio.TooSlowError, ChannelError, trio.BrokenResourceError,
                    EOFError) as exc:
                log.debug("relay to %s via %s failed: %s", peer.address, via, exc)
                await stream.aclose()
                continue
            if self.nat is not None and self.nat.ice:
                self._spawn_ice(self._upgrade, peer)
            await self._serve(stream, channel, reader, peer, peer.address, node_id, Path("relay", via=via))
            return True
        return False

    # --- receiving --------------------------------------------------------

    async def _accept_tcp(self, stream: trio.SocketStream) -> None:
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
            if dst == self.address:
                self._tunnel_in(remote, src, sid, blob)
            elif self.nat is not None and self.nat.relay and self._is_connected(dst) and src == remote:
                self.send(dst, payload)  # relay: sealed bytes we cannot open, one hop
                self.stats.relayed += 1
            elif blob:
                self._send_control(remote, nat.control(nat.NOFWD, dst, sid))
        elif kind == nat.NOFWD:
            tunnel = self._tunnels.get((msg[1], msg[2]))
            if tunnel is not None:
                tunnel.feed(b"")
        elif kind == nat.ICE_OFFER:
            if self.nat is not None and self.nat.ice:
                self._spawn_ice(self._ice_in, remote, msg[1], IceOffer(msg[2], msg[3], msg[4]))
            else:
                self._send_control(remote, nat.control(nat.ICE_FAIL, msg[1], "ICE is off on this node"))
        elif kind in (nat.ICE_ANSWER, nat.ICE_FAIL):
            waiting = self._answers.get((remote, msg[1]))
            if waiting is not None:
                with suppress(trio.WouldBlock, trio.ClosedResourceError):
                    waiting.send_nowait(IceOffer(msg[2], msg[3], msg[4]) if kind == nat.ICE_ANSWER else msg[2])

    def _tunnel_in(self, via: str, src: str, sid: int, blob: bytes) -> None:
        tunnel = self._tunnels.get((src, sid))
        if tunnel is not None:
            tunnel.feed(blob)
        elif blob and self.nat is not None:  # a new relayed channel from src
            tunnel = RelayStream(self, via, src, sid)
            self._tunnels[(src, sid)] = tunnel
            tunnel.feed(blob)
            assert self._nursery is not None
            self._nursery.start_soon(self._accept, tunnel, f"{src} via {via}", Path("relay", via=via, inbound=True))

    def _stun_server(self, prefer: str = "") -> tuple[str, int] | None:
        """The configured STUN server, else a peer we dialled directly (it sees our public address)."""
        assert self.nat is not None
        if self.nat.servers.stun is not None:
            return self.nat.servers.stun
        candidates = ([prefer] if prefer in self._outbound else []) + sorted(self._outbound)
        for address in candidates:
            if self._is_connected(address):
                return parse_hostport(address, "peer address")
        return None

    def _servers(self, prefer: str = "") -> IceServers:
        assert self.nat is not None
        return replace(self.nat.servers, stun=self._stun_server(prefer))

    async def _upgrade(self, peer: _Peer) -> None:
        """While the channel to ``peer`` is relayed, try ICE now and then."""
        assert self.nat is not None
        if peer.upgrading:
            return
        peer.upgrading = True
        try:
            await trio.sleep(0.2)
            while self._peers.get(peer.address) is peer and peer.connected and peer.path is not None \
                    and peer.path.kind == "relay":
                if peer.address not in self._ice_running:
                    served = await self._ice_out(peer)
                    if served:
                        return
                await trio.sleep(self.nat.upgrade_interval * random.uniform(0.8, 1.2))
        finally:
            peer.upgrading = False

    async def _ice_out(self, peer: _Peer) -> bool:
        """One ICE attempt as the controlling side; True once a channel ran over it."""
        assert self.nat is not None
        attempt = random.getrandbits(31)
        answers_send, answers = trio.open_memory_channel[IceOffer | str](1)
        self._answers[(peer.address, attempt)] = answers_send
        self._ice_running.add(peer.address)
        ice = IceSession(controlling=True, servers=self._servers(peer.path.via if peer.path else ""),
                         loop=self._loop)
        try:
            with trio.move_on_after(self.nat.ice_timeout + 10) as scope:
                offer = await ice.gather()
                self._send_control(peer.address, nat.control(nat.ICE_OFFER, attempt, offer.ufrag, offer.pwd,
                                                             offer.candidates))
                answer = await answers.receive()
                if isinstance(answer, str):
                    raise IceFailed(f"the peer gave up: {answer}")
                await ice.connect(answer, self.nat.ice_timeout)
            if scope.cancelled_caught:
                raise IceFailed("no answer in time")
            local, remote = ice.pair_types()
            async with QuicStream.open(ice, client=True) as stream:
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        channel, node_id, reader = await self._handshake_out(stream)
                except (_Refused, KeyMismatch, ChannelError, OSError, EOFError, trio.TooSlowError,
                        trio.BrokenResourceError) as exc:
                    raise IceFailed(f"no channel over the ICE path: {exc}") from None
                self._ice_running.discard(peer.address)
                if self._peers.get(peer.address) is not peer:
                    return True
                self.stats.ice += 1
                await self._serve(stream, channel, reader, peer, peer.address, node_id, Path("ice", local=local,
                                                                                                remote=remote))
            return True
        except IceFailed as exc:
            self.stats.ice_failed += 1
            log.info("ICE to %s failed (%s); the channel stays relayed", peer.address, exc)
            return False
        finally:
            self._answers.pop((peer.address, attempt), None)
            self._ice_running.discard(peer.address)
            await ice.close()

    async def _ice_in(self, remote: str, attempt: int, offer: IceOffer) -> None:
        """Answer an ICE offer as the controlled side and accept the channel over it."""
        assert self.nat is not None
        if remote in self._ice_running:
            self._send_control(remote, nat.control(nat.ICE_FAIL, attempt, "busy"))
            return
        self._ice_running.add(remote)
        peer = self._peers.get(remote)
        ice = IceSession(controlling=False, servers=self._servers(peer.path.via if peer and peer.path else ""),
                         loop=self._loop)
        try:
            with trio.fail_after(self.nat.ice_timeout + 10):
                answer = await ice.gather()
                self._send_control(remote, nat.control(nat.ICE_ANSWER, attempt, answer.ufrag, answer.pwd,
                                                       answer.candidates))
                await ice.connect(offer, self.nat.ice_timeout)
            local, kind = ice.pair_types()
            self._ice_running.discard(remote)
            async with QuicStream.open(ice, client=False) as stream:
                await self._accept(stream, f"{remote} over ICE", Path("ice", local=local, remote=kind, inbound=True))
        except (IceFailed, trio.TooSlowError) as exc:
            log.info("ICE from %s failed (%s)", remote, exc)
        finally:
            self._ice_running.discard(remote)
            await ice.close()

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
            self._ready.extend(self._decoder.feed(data))
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
