"""Where keys live: the ring over the members that are alive (or only
suspected), their peer addresses, and the replica sets derived from them.

Keys move only when a member is declared dead or leaves, never on a mere
suspicion, so a slow node does not make data change place. Each change makes
a new immutable ring and bumps ``version``; callers that cache decisions
(which keys they have caught up) compare versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from timpy.cluster.membership import Member, State
from timpy.cluster.ring import DEFAULT_VNODES, HashRing


@dataclass(frozen=True)
class ReplicationConfig:
    replicas: int = 3  # R: copies of each key, capped by the number of nodes
    write_quorum: int = 2  # W: copies stored before a write is acknowledged
    vnodes: int = DEFAULT_VNODES

    def __post_init__(self) -> None:
        if self.replicas < 1 or not 1 <= self.write_quorum <= self.replicas:
            raise ValueError(
                f"replication needs 1 <= write_quorum <= replicas, got W={self.write_quorum}, R={self.replicas}"
            )


class Placement:
    def __init__(self, self_id: str, self_address: str, config: ReplicationConfig) -> None:
        self.self_id = self_id
        self.config = config
        self.addresses: dict[str, str] = {self_id: self_address}
        self.ring = HashRing.of([self_id], config.vnodes)
        self.previous: HashRing | None = None  # the ring before the last change (where keys were)
        # Every ring catch-up reads besides the current one: ``previous`` and
        # the ones before it back to the last settled ring (``Epoch.rings``).
        self.history: tuple[HashRing, ...] = ()
        self.gone: frozenset[str] = frozenset()  # members of those rings an operator forgot (``Epoch.gone``)
        self._settled: dict[tuple[frozenset[str], frozenset[str]], bool] = {}
        self._replica_sets: dict[frozenset[str], list[frozenset[str]]] = {}  # a ring's every replica set
        self.version = 0

    def update(self, members: Iterable[Member]) -> bool:
        """Take the membership's current view; True when the ring changed."""
        live = {m.name: m.address for m in members if m.state in (State.ALIVE, State.SUSPECT)}
        live.setdefault(self.self_id, self.addresses[self.self_id])
        self.addresses.update(live)
        return self.set_members(live)

    def set_members(
        self, members: Iterable[str], previous: Iterable[str] | None = None,
        earlier: Iterable[Iterable[str]] = (), gone: Iterable[str] | None = None,
    ) -> bool:
        """Place keys on exactly these nodes (a ring epoch a majority accepted);
        ``previous``: the members of the ring it replaced; ``earlier``: the
        rings before that one catch-up must still read (``Epoch.earlier``);
        ``gone``: members of those an operator forgot (``Epoch.gone``; None: as before).
        True when the ring or its history changed."""
        names = frozenset(members) or frozenset({self.self_id})
        if previous is None and names == self.ring.members:
            return False  # no epoch says otherwise: the ring it replaced is the one it replaced before
        before = frozenset(previous) if previous is not None else self.ring.members
        rings = tuple(frozenset(r) for r in ((before,) if before else ()) + tuple(earlier) if r)
        gone = self.gone if gone is None else frozenset(gone)
        if names == self.ring.members and rings == tuple(r.members for r in self.history) and gone == self.gone:
            return False
        self.gone = gone
        old = {r.members: r for r in self.history}
        self.history = tuple(old.get(r) or HashRing.of(r, self.config.vnodes) for r in rings)
        self.previous = self.history[0] if before and self.history else None
        if names != self.ring.members:
            self.ring = HashRing.of(names, self.config.vnodes)
        self.version += 1
        return True

    def previous_replicas(self, key: bytes) -> list[str]:
        """The key's replicas before the last ring change (empty if none)."""
        return self.previous.replicas(key, self.config.replicas) if self.previous is not None else []

    def history_replicas(self, key: bytes) -> list[list[str]]:
        """The key's replicas in each ring of the history, newest first."""
        return [r.replicas(key, self.config.replicas) for r in self.history]

    def answers_needed(self, replicas: Sequence[str]) -> int:
        """Of a key's ``replicas`` in one ring, how many must answer so that
        any W of them include one that did (R − W + 1): an acknowledged write
        there is then among the answers. Members an operator forgot count as
        answered with nothing (what only they held is given up)."""
        w = min(self.config.write_quorum, len(replicas))
        return max(0, len(replicas) - w + 1 - len(self.gone.intersection(replicas)))

    def held_before(self, key: bytes) -> bool:
        """Whether this node is one of the key's replicas in a ring of the history."""
        return any(self.self_id in r for r in self.history_replicas(key))

    def settled(self, ring: frozenset[str], repaired: frozenset[str]) -> bool:
        """Whether every key's data has left ``ring`` for the current one, given
        the members ``repaired`` that finished a full repair pass under the
        current ring: every key has, among its replicas in ``ring``, more than
        R - W that are such members. An acknowledged write is on W of them, so
        one of these held it and its pass copied it to the key's current
        replicas (docs/consistency.md, "Catch-up across several rings")."""
        repaired = repaired & ring
        key = (ring, repaired)
        found = self._settled.get(key)
        if found is None:  # asked again and again by the proposer (every 0.1 s): computed once per answer
            r = self.config.replicas
            need = min(r, len(ring)) - min(self.config.write_quorum, len(ring)) + 1
            if len(repaired) < need:
                found = False
            else:
                sets = self._replica_sets.get(ring)
                if sets is None:
                    if len(self._replica_sets) >= 32:
                        self._replica_sets.clear()
                    sets = self._replica_sets[ring] = [
                        frozenset(s) for s in HashRing.of(ring, self.config.vnodes).replica_sets(r)
                    ]
                found = all(len(s & repaired) >= need for s in sets)
            if len(self._settled) >= 256:
                self._settled.clear()
            self._settled[key] = found
        return found

    @property
    def members(self) -> frozenset[str]:
        return self.ring.members

    def owner(self, key: bytes) -> str:
        return self.ring.owner(key)

    def replicas(self, key: bytes) -> list[str]:
        """Owner first, then the next distinct nodes clockwise (R at most)."""
        return self.ring.replicas(key, self.config.replicas)

    def is_local(self, key: bytes) -> bool:
        return self.ring.owner(key) == self.self_id

    def holds(self, key: bytes) -> bool:
        """Whether this node is one of the key's replicas."""
        return self.self_id in self.replicas(key)

    def acks_needed(self, key: bytes) -> int:
        """Copies besides the owner's that a write must reach before it is acknowledged."""
        return min(self.config.write_quorum, len(self.replicas(key))) - 1

    def address(self, node_id: str) -> str:
        return self.addresses[node_id]

    @property
    def single(self) -> bool:
        return len(self.ring) == 1

    @property
    def alone(self) -> bool:
        """A ring of one that replaced no ring with other members: no other node ever held its keys."""
        return self.single and all(r.members <= {self.self_id} for r in self.history)
