"""Moving a relayed peer channel onto a direct path found by ICE (docs/nat.md).

While a channel to a peer is relayed, the two sides now and then run ICE
(aioice, hosted with trio-asyncio) over control frames in that channel; once
a pair of UDP candidates connects, a new peer channel runs inside QUIC over
it and, being the better path, replaces the relayed one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from timpy.cluster import nat
from timpy.cluster.channel import ChannelError, KeyMismatch
from timpy.cluster.ice import IceFailed, IceOffer, IceServers, IceSession, QuicStream
from timpy.cluster.nat import Path
from timpy.cluster.transport.base import HANDSHAKE_TIMEOUT, Refused
from timpy.config import parse_hostport

if TYPE_CHECKING:
    from timpy.cluster.transport.tcp import TcpPeerTransport, _Peer

log = logging.getLogger("timpy.cluster")


class IceUpgrade:
    """The ICE side of one TCP transport: offers while relayed, answers to
    peers' offers, and the trio-asyncio loop aioice runs in."""

    def __init__(self, transport: TcpPeerTransport) -> None:
        self.transport = transport
        self.loop: asyncio.AbstractEventLoop | None = None
        self._answers: dict[tuple[str, int], trio.MemorySendChannel[IceOffer | str]] = {}
        self._running: set[str] = set()
        self._jobs: trio.MemorySendChannel[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None = None

    async def worker(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Starts the ICE tasks. A trio task inherits the context of the task that
        starts it, and trio-asyncio finds its loop there (asyncio callbacks too),
        so every task that touches aioice is started from here, inside the loop."""
        jobs_send, jobs = trio.open_memory_channel[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]](math.inf)
        self._jobs = jobs_send
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for fn, args in jobs:
                nursery.start_soon(fn, *args)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._jobs is not None
        self._jobs.send_nowait((fn, args))

    def on_control(self, remote: str, msg: list[Any]) -> None:
        """An ICE_OFFER, ICE_ANSWER or ICE_FAIL control frame from ``remote``."""
        t = self.transport
        kind = msg[0]
        if kind == nat.ICE_OFFER:
            if t.nat is not None and t.nat.ice:
                self.spawn(self._answer, remote, msg[1], IceOffer(msg[2], msg[3], msg[4]))
            else:
                t._send_control(remote, nat.control(nat.ICE_FAIL, msg[1], "ICE is off on this node"))
        elif kind in (nat.ICE_ANSWER, nat.ICE_FAIL):
            waiting = self._answers.get((remote, msg[1]))
            if waiting is not None:
                with suppress(trio.WouldBlock, trio.ClosedResourceError):
                    waiting.send_nowait(IceOffer(msg[2], msg[3], msg[4]) if kind == nat.ICE_ANSWER else msg[2])

    def _stun_server(self, prefer: str = "") -> tuple[str, int] | None:
        """The configured STUN server, else a peer we dialled directly (it sees our public address)."""
        t = self.transport
        assert t.nat is not None
        if t.nat.servers.stun is not None:
            return t.nat.servers.stun
        candidates = ([prefer] if prefer in t._outbound else []) + sorted(t._outbound)
        for address in candidates:
            if t._is_connected(address):
                return parse_hostport(address, "peer address")
        return None

    def _servers(self, prefer: str = "") -> IceServers:
        assert self.transport.nat is not None
        return replace(self.transport.nat.servers, stun=self._stun_server(prefer))

    async def upgrade(self, peer: _Peer) -> None:
        """While the channel to ``peer`` is relayed, try ICE now and then."""
        t = self.transport
        assert t.nat is not None
        if peer.upgrading:
            return
        peer.upgrading = True
        try:
            await trio.sleep(0.2)
            while t._peers.get(peer.address) is peer and peer.connected and peer.path is not None \
                    and peer.path.kind == "relay":
                if peer.address not in self._running:
                    served = await self._offer(peer)
                    if served:
                        return
                await trio.sleep(t.nat.upgrade_interval * random.uniform(0.8, 1.2))
        finally:
            peer.upgrading = False

    async def _offer(self, peer: _Peer) -> bool:
        """One ICE attempt as the controlling side; True once a channel ran over it."""
        t = self.transport
        assert t.nat is not None and self.loop is not None
        attempt = random.getrandbits(31)
        answers_send, answers = trio.open_memory_channel[IceOffer | str](1)
        self._answers[(peer.address, attempt)] = answers_send
        self._running.add(peer.address)
        ice = IceSession(controlling=True, servers=self._servers(peer.path.via if peer.path else ""),
                         loop=self.loop)
        try:
            with trio.move_on_after(t.nat.ice_timeout + 10) as scope:
                offer = await ice.gather()
                t._send_control(peer.address, nat.control(nat.ICE_OFFER, attempt, offer.ufrag, offer.pwd,
                                                          offer.candidates))
                answer = await answers.receive()
                if isinstance(answer, str):
                    raise IceFailed(f"the peer gave up: {answer}")
                await ice.connect(answer, t.nat.ice_timeout)
            if scope.cancelled_caught:
                raise IceFailed("no answer in time")
            local, remote = ice.pair_types()
            async with QuicStream.open(ice, client=True) as stream:
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        channel, node_id, reader = await t._handshake_out(stream)
                except (Refused, KeyMismatch, ChannelError, OSError, EOFError, trio.TooSlowError,
                        trio.BrokenResourceError) as exc:
                    raise IceFailed(f"no channel over the ICE path: {exc}") from None
                self._running.discard(peer.address)
                if t._peers.get(peer.address) is not peer:
                    return True
                t.stats.ice += 1
                await t._serve(stream, channel, reader, peer, peer.address, node_id, Path("ice", local=local,
                                                                                             remote=remote))
            return True
        except IceFailed as exc:
            t.stats.ice_failed += 1
            log.info("ICE to %s failed (%s); the channel stays relayed", peer.address, exc)
            return False
        finally:
            self._answers.pop((peer.address, attempt), None)
            self._running.discard(peer.address)
            await ice.close()

    async def _answer(self, remote: str, attempt: int, offer: IceOffer) -> None:
        """Answer an ICE offer as the controlled side and accept the channel over it."""
        t = self.transport
        assert t.nat is not None and self.loop is not None
        if remote in self._running:
            t._send_control(remote, nat.control(nat.ICE_FAIL, attempt, "busy"))
            return
        self._running.add(remote)
        peer = t._peers.get(remote)
        ice = IceSession(controlling=False, servers=self._servers(peer.path.via if peer and peer.path else ""),
                         loop=self.loop)
        try:
            with trio.fail_after(t.nat.ice_timeout + 10):
                answer = await ice.gather()
                t._send_control(remote, nat.control(nat.ICE_ANSWER, attempt, answer.ufrag, answer.pwd,
                                                    answer.candidates))
                await ice.connect(offer, t.nat.ice_timeout)
            local, kind = ice.pair_types()
            self._running.discard(remote)
            async with QuicStream.open(ice, client=False) as stream:
                await t._accept(stream, f"{remote} over ICE", Path("ice", local=local, remote=kind, inbound=True))
        except (IceFailed, trio.TooSlowError) as exc:
            log.info("ICE from %s failed (%s)", remote, exc)
        finally:
            self._running.discard(remote)
            await ice.close()
