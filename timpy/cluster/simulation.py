"""A deterministic network of sans-IO membership nodes, in one process.

Messages are delivered after a random delay, dropped with a given
probability, and never cross a partition or reach a crashed node. Time is
simulated, so a minute of a 200-node cluster runs in seconds, and the same
seed always gives the same run.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from timpy.cluster.membership import Changed, Membership, MembershipConfig, Message, Send, State


@dataclass
class SimNetwork:
    seed: int = 0
    loss: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.005)
    config: MembershipConfig = field(default_factory=MembershipConfig)
    step: float = 0.05

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.nodes: dict[str, Membership] = {}
        self.crashed: set[str] = set()
        self.groups: dict[str, int] = {}  # address -> partition group; empty = no partition
        self.changes: list[tuple[float, str, Changed]] = []  # (time, observer, change)
        self.sent = 0
        self._queue: list[tuple[float, int, str, Message]] = []
        self._counter = itertools.count()

    # --- building ---------------------------------------------------------

    def add(self, name: str, seeds: list[str] | None = None) -> Membership:
        node = Membership(name, name, self.config, random.Random(self.rng.random()), self.now)
        self.nodes[name] = node
        if seeds:
            self._act(name, node.join(self.now, seeds))
        return node

    def crash(self, name: str) -> None:
        self.crashed.add(name)

    def leave(self, name: str) -> None:
        self._act(name, self.nodes[name].leave(self.now))

    def partition(self, *groups: list[str]) -> None:
        self.groups = {name: i for i, group in enumerate(groups) for name in group}

    def heal(self) -> None:
        self.groups = {}

    # --- running ----------------------------------------------------------

    def _reachable(self, a: str, b: str) -> bool:
        return not self.groups or self.groups.get(a, -1) == self.groups.get(b, -2)

    def _act(self, source: str, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent += 1
                if self.rng.random() < self.loss:
                    continue
                at = self.now + self.rng.uniform(*self.delay)
                heapq.heappush(self._queue, (at, next(self._counter), action.address, action.message, source))
            elif isinstance(action, Changed):
                self.changes.append((self.now, source, action))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + self.step, 9)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, dest, message, source = heapq.heappop(self._queue)
                if dest in self.crashed or source in self.crashed or dest not in self.nodes:
                    continue
                if not self._reachable(source, dest):
                    continue
                self._act(dest, self.nodes[dest].receive(self.now, message))
            for name, node in self.nodes.items():
                if name not in self.crashed:
                    self._act(name, node.tick(self.now))

    def run_until(self, predicate, limit: float) -> float | None:  # noqa: ANN001
        """Run until ``predicate()`` holds; the simulated seconds it took, or None."""
        start = self.now
        while self.now - start < limit:
            if predicate():
                return self.now - start
            self.run(self.config.probe_interval / 4)
        return self.now - start if predicate() else None

    # --- observing --------------------------------------------------------

    def live(self) -> set[str]:
        return {n for n, node in self.nodes.items() if n not in self.crashed and not node.leaving}

    def converged(self, group: set[str] | None = None) -> bool:
        """Every live node (of ``group``) sees exactly the live nodes (of ``group``) as alive."""
        expect = group if group is not None else self.live()
        return all(self.nodes[n].alive_members() == expect for n in expect)

    def declared_dead(self) -> set[tuple[str, str]]:
        """(observer, member) pairs where a node was declared dead."""
        return {(obs, c.name) for _, obs, c in self.changes if c.state == State.DEAD}
