"""A consistent-hash ring with virtual nodes: owners and replica sets of keys.

Pure and immutable: ``with_member``/``without_member`` return new rings, so a
caller can compare the old and new placement of any key (what moves when the
ring changes). Each member gets ``vnodes * weight`` points on a 64-bit circle;
a key belongs to the first point clockwise of its hash, and its replicas are
the next distinct members clockwise.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_VNODES = 128
_SPACE = 1 << 64


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=b"timpy-ring-v1").digest(), "big")


@functools.lru_cache(maxsize=4096)
def _points_of(member: str, count: int) -> tuple[int, ...]:
    """A member's points on the circle: hashed once, not on every ring built
    (each ring change builds two rings on every node, 128 points a member)."""
    return tuple(_hash(f"v{member}#{i}".encode()) for i in range(count))


def key_point(key: bytes) -> int:
    """Where a key sits on the circle."""
    return _hash(b"k" + key)


@dataclass(frozen=True)
class HashRing:
    weights: Mapping[str, float]
    vnodes: int = DEFAULT_VNODES
    _points: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        pairs: list[tuple[int, str]] = []
        for member, weight in sorted(self.weights.items()):
            if weight <= 0:
                raise ValueError(f"member {member!r} has weight {weight}; weights are positive")
            count = max(1, round(self.vnodes * weight))
            pairs.extend((point, member) for point in _points_of(member, count))
        pairs.sort()
        object.__setattr__(self, "_points", tuple(p for p, _ in pairs))
        object.__setattr__(self, "_owners", tuple(m for _, m in pairs))
        object.__setattr__(self, "weights", dict(self.weights))

    @classmethod
    def of(cls, members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> HashRing:
        return cls({m: 1.0 for m in members}, vnodes)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def owner(self, key: bytes) -> str:
        """The member that owns ``key``."""
        if not self._points:
            raise LookupError("the ring has no members")
        i = bisect.bisect_right(self._points, key_point(key)) % len(self._points)
        return self._owners[i]

    def replicas(self, key: bytes, count: int) -> list[str]:
        """The owner and the next distinct members clockwise, ``count`` at most."""
        if not self._points:
            raise LookupError("the ring has no members")
        want = min(count, len(self.weights))
        out: list[str] = []
        start = bisect.bisect_right(self._points, key_point(key))
        for step in range(len(self._points)):
            member = self._owners[(start + step) % len(self._points)]
            if member not in out:
                out.append(member)
                if len(out) == want:
                    break
        return out

    def replica_sets(self, count: int) -> set[tuple[str, ...]]:
        """Every distinct replica set (owner first) some key of the circle has:
        one per arc between two points."""
        if not self._points:
            return set()
        want = min(count, len(self.weights))
        n = len(self._points)
        out: set[tuple[str, ...]] = set()
        for start in range(n):
            got: list[str] = []
            for step in range(n):
                member = self._owners[(start + step) % n]
                if member not in got:
                    got.append(member)
                    if len(got) == want:
                        break
            out.add(tuple(got))
        return out

    def with_member(self, member: str, weight: float = 1.0) -> HashRing:
        return HashRing({**self.weights, member: weight}, self.vnodes)

    def without_member(self, member: str) -> HashRing:
        return HashRing({m: w for m, w in self.weights.items() if m != member}, self.vnodes)

    def shares(self) -> dict[str, float]:
        """The fraction of the circle each member owns (sums to 1)."""
        if not self._points:
            return {}
        shares = dict.fromkeys(self.weights, 0.0)
        n = len(self._points)
        for i, point in enumerate(self._points):
            # the arc (previous point, this point] belongs to this point's member
            prev = self._points[i - 1] if i else self._points[-1] - _SPACE
            shares[self._owners[i]] += (point - prev) / _SPACE
        if n == 1:
            shares[self._owners[0]] = 1.0
        return shares
