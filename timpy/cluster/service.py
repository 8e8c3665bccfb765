"""The trio shell around the membership state machine.

Feeds it the clock (every ``tick_interval``) and what the transport receives,
and carries out what it returns: messages go to the transport, state changes
to the log and to whoever listens.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

import trio

from timpy.cluster import codec
from timpy.cluster.membership import Action, Changed, Membership, MembershipConfig, Send, State
from timpy.cluster.rpc import Rpc, is_rpc
from timpy.cluster.transport.base import PeerTransport

log = logging.getLogger("timpy.cluster")


class ClusterService:
    def __init__(
        self,
        name: str,
        transport: PeerTransport,
        config: MembershipConfig | None = None,
        seeds: list[str] | None = None,
        tick_interval: float = 0.05,
        on_change: Callable[[Changed], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.config = config or MembershipConfig()
        self.seeds = seeds or []
        self.tick_interval = tick_interval
        self.on_change = on_change
        self.membership: Membership | None = None
        self.bad_messages = 0
        self.sent: Counter[str] = Counter()  # membership messages sent, by kind (Ping = a probe round)
        self.rpc = Rpc(transport)
        self._rng = rng or random.Random()

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent[type(action.message).__name__] += 1
                self.transport.send(action.address, codec.encode(action.message))
            elif isinstance(action, Changed):
                level = logging.WARNING if action.state == State.DEAD else logging.INFO
                log.log(level, "member %s at %s is %s (incarnation %d)", action.name, action.address, action.state.value, action.incarnation)
                if self.on_change is not None:
                    self.on_change(action)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                await nursery.start(self.rpc.run)
                now = trio.current_time()
                self.membership = Membership(self.name, self.transport.address, self.config, self._rng, now)
                self._act(self.membership.join(now, self.seeds))
                nursery.start_soon(self._ticker)
                if hasattr(self.transport, "on_receive"):
                    # the transport hands each frame over in the task that read it: no hop through a channel
                    # (what came before, while the service started, waits in ``incoming``: taken first)
                    self.transport.on_receive = self._receive
                    while True:
                        try:
                            self._receive(self.transport.incoming.receive_nowait())
                        except trio.WouldBlock:
                            break
                else:
                    nursery.start_soon(self._receiver)
                task_status.started()
        finally:
            if getattr(self.transport, "on_receive", None) == self._receive:
                self.transport.on_receive = None

    async def _ticker(self) -> None:
        assert self.membership is not None
        next_warning = trio.current_time() + 5.0
        while True:
            now = trio.current_time()
            self._act(self.membership.tick(now))
            if self.seeds and len(self.membership.members) == 1 and now >= next_warning:
                log.warning(
                    "no member answered at %s yet; still trying. Until one does this node serves no writes",
                    ", ".join(self.seeds),
                )
                next_warning = now + 30.0
            await trio.sleep(self.tick_interval)

    async def _receiver(self) -> None:
        async for payload in self.transport.incoming:
            self._receive(payload)

    def _receive(self, payload: bytes) -> None:
        """One frame from a peer: a request or reply for ``rpc``, or a membership message."""
        assert self.membership is not None
        try:
            raw = codec.unpack(payload)
            if is_rpc(raw):
                self.rpc.receive(raw)
                return
            message = codec.from_raw(raw)
        except codec.CodecError:
            self.bad_messages += 1
            return
        self._act(self.membership.receive(trio.current_time(), message))

    async def leave(self, grace: float = 0.3) -> None:
        """Announce a graceful leave and give the announcement time to go out."""
        if self.membership is not None:
            self._act(self.membership.leave(trio.current_time()))
            await trio.sleep(grace)

    def status(self) -> list[dict[str, object]]:
        """Members as this node sees them: name, address, state, incarnation."""
        if self.membership is None:
            return []
        return [
            {"name": m.name, "address": m.address, "state": m.state.value, "incarnation": m.incarnation}
            for m in sorted(self.membership.members.values(), key=lambda m: m.name)
        ]
