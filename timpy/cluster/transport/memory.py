"""An in-memory network with the transport interface, for in-process clusters.

``MemoryNetwork`` connects ``MemoryTransport``s by address and decides, frame
by frame, what arrives: partitions between groups of addresses (an address in
two groups is a bridge that sees both sides), one-way cuts, isolated
addresses, random loss and delay. Every random choice comes from one
``random.Random(seed)`` and every wait from trio's clock, so under
``trio.testing.MockClock`` a scenario runs the same way each time (given a
deterministic trio scheduler, as pytest-trio provides under hypothesis) and a
30 s partition takes no 30 s of real time.

Delayed frames keep their order per link (as a TCP channel does): a frame is
never delivered before one sent earlier on the same (sender, receiver) pair.
Whether a frame may pass is checked when it is sent and again when it is
delivered, so a partition also stops frames already in flight.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable

import trio

from timpy.cluster.nat import Path
from timpy.cluster.transport.base import TransportStats


class MemoryNetwork:
    """Addresses to transports, and the rules for what passes between them.

    ``loss`` is the chance that a frame is lost, ``delay`` the seconds every
    frame takes, plus up to ``jitter`` seconds more, drawn at random; all
    three may be changed at any time. ``dropped`` counts lost frames by
    reason ("partition", "cut", "down", "loss", "absent", "full")."""

    def __init__(self, loss: float = 0.0, seed: int = 0, delay: float = 0.0, jitter: float = 0.0) -> None:
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.down: set[str] = set()  # addresses cut off from everyone, both ways
        self.dropped: Counter[str] = Counter()
        self._transports: dict[str, MemoryTransport] = {}
        self._groups: list[frozenset[str]] | None = None
        self._cuts: set[tuple[str, str]] = set()
        self._last_due: dict[tuple[str, str], float] = {}
        self._order = itertools.count()

    def transport(self, address: str, queue: int = 1024) -> MemoryTransport:
        """A transport at ``address`` on this network (replacing one there before)."""
        return MemoryTransport(self, address, queue)

    # --- what the test controls --------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """From now on two addresses reach each other only if some group holds
        both: ``partition({a, b}, {c, d, e})`` splits five nodes 2/3, and
        ``partition({a, b, x}, {x, c, d})`` makes ``x`` a bridge that sees both
        sides. An address in no group reaches nobody. Replaces an earlier
        partition; one-way cuts and ``down`` stay."""
        self._groups = [frozenset(g) for g in groups]

    def cut(self, source: str, destination: str) -> None:
        """Frames from ``source`` to ``destination`` are lost (the other way still works)."""
        self._cuts.add((source, destination))

    def heal(self) -> None:
        """End the partition, every cut and every ``down`` address; loss and delay stay."""
        self._groups = None
        self._cuts.clear()
        self.down.clear()

    def reachable(self, source: str, destination: str) -> bool:
        """Whether a frame from ``source`` may reach ``destination`` now (loss aside)."""
        return self._blocked(source, destination) is None

    def _blocked(self, source: str, destination: str) -> str | None:
        if source in self.down or destination in self.down:
            return "down"
        if (source, destination) in self._cuts:
            return "cut"
        if self._groups is not None and source != destination and not any(
            source in g and destination in g for g in self._groups
        ):
            return "partition"
        return None

    # --- carrying frames ----------------------------------------------------

    def _send(self, source: MemoryTransport, destination: str, payload: bytes) -> bool:
        """Carry one frame; False when it was lost (counted by reason)."""
        target = self._transports.get(destination)
        why = self._blocked(source.address, destination) if target is not None else "absent"
        if why is None and self.loss > 0 and self.rng.random() < self.loss:
            why = "loss"
        if why is not None:
            self.dropped[why] += 1
            return False
        assert target is not None
        link = (source.address, destination)
        wait = self.delay + (self.rng.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0)
        if wait <= 0 and link not in self._last_due:
            return target._arrive(source.address, payload)
        due = max(trio.current_time() + wait, self._last_due.get(link, 0.0))
        self._last_due[link] = due
        target._schedule(due, next(self._order), source.address, payload)
        return True

    def _attach(self, transport: MemoryTransport) -> None:
        old = self._transports.get(transport.address)
        if old is not None and old is not transport:
            old._detached()
        self._transports[transport.address] = transport
        for link in [k for k in self._last_due if transport.address in k]:
            del self._last_due[link]  # a new transport: nothing from before is in flight to or from it

    def _detach(self, transport: MemoryTransport) -> None:
        if self._transports.get(transport.address) is transport:
            del self._transports[transport.address]
            for link in [k for k in self._last_due if transport.address in k]:
                del self._last_due[link]


class MemoryTransport:
    """A peer transport on a ``MemoryNetwork``: ``send`` never blocks; frames
    are dropped (and counted) when the network or a full queue says so. It
    is on the network from construction until its ``run`` ends."""

    def __init__(self, network: MemoryNetwork, address: str, queue: int = 1024) -> None:
        self.network = network
        self.address = address
        self._incoming_send, self.incoming = trio.open_memory_channel[bytes](queue)
        self.stats = TransportStats()
        self._pending: list[tuple[float, int, str, bytes]] = []  # (due, order, source, payload)
        self._wakeup = trio.Event()
        self._gone = False
        network._attach(self)

    def send(self, address: str, payload: bytes) -> None:
        if not self._gone and self.network._send(self, address, payload):
            self.stats.sent += 1
        else:
            self.stats.dropped += 1

    def _arrive(self, source: str, payload: bytes) -> bool:
        if self._gone:
            self.network.dropped["absent"] += 1
            return False
        try:
            self._incoming_send.send_nowait(payload)
            return True
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.network.dropped["full"] += 1
            return False

    def _schedule(self, due: float, order: int, source: str, payload: bytes) -> None:
        heapq.heappush(self._pending, (due, order, source, payload))
        self._wakeup.set()

    def _detached(self) -> None:
        self._gone = True
        self._pending.clear()

    def close(self) -> None:
        """Leave the network now, as a crashed host does: nothing is sent or received from here on."""
        self._detached()
        self.network._detach(self)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver delayed frames when they are due; leaves the network when cancelled."""
        if self._gone:
            self.network._attach(self)  # run again after an earlier run ended
            self._gone = False
        try:
            task_status.started()
            while True:
                self._wakeup = trio.Event()
                if not self._pending:
                    await self._wakeup.wait()
                    continue
                due, _, source, payload = self._pending[0]
                if due > trio.current_time():
                    with trio.move_on_at(due):
                        await self._wakeup.wait()
                    continue
                heapq.heappop(self._pending)
                why = self.network._blocked(source, self.address)
                if why is not None:
                    self.network.dropped[why] += 1
                else:
                    self._arrive(source, payload)
                await trio.lowlevel.checkpoint()
        finally:
            self._detached()
            self.network._detach(self)

    def connected_peers(self) -> dict[str, str]:
        """Addresses this transport can reach now (the network has no node ids: values are empty)."""
        return {a: "" for a in self.network._transports if a != self.address and self.network.reachable(self.address, a)}

    def paths(self) -> dict[str, Path]:
        return {}
