"""The backend map of shared-backend mode: which SQL backends exist, and
which of them holds each user and conversation.

Pure values. The map is versioned; every node uses the map with the highest
version it has seen (spread between nodes by RPC and kept in every backend's
``timpy_meta``), and a map changes only through a move that the rebalancer
drives (``timpy backend add/remove``), never by editing a node's file.

A move walks through phases, each a new map version:

``copy``     writes go to the old place; the rebalancer copies what moves.
``freeze``   writes to keys that move wait; the rebalancer copies the rest
             and verifies.
``cleanup``  the new backends are current: reads and writes go to the new
             place; the rebalancer deletes the old copies.

After cleanup the move is dropped (and a removed backend with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from timpy.cluster.ring import HashRing
from timpy.config import BackendSpec  # the config model defines it: config sits below the store
from timpy.errors import ConfigError

BACKEND_VNODES = 256
PHASES = ("copy", "freeze", "cleanup")


def backend_ring(backends: tuple[BackendSpec, ...]) -> HashRing:
    return HashRing({b.name: b.weight for b in backends}, BACKEND_VNODES)


@dataclass(frozen=True)
class Move:
    """A change of the backend set in progress."""

    target: tuple[BackendSpec, ...]  # the backends once the move is done
    phase: str  # one of PHASES
    driver: str  # the node driving it
    previous: tuple[BackendSpec, ...] = ()  # in cleanup: the backends before the move

    def pack(self) -> list[Any]:
        return [[b.pack() for b in self.target], self.phase, self.driver, [b.pack() for b in self.previous]]

    @classmethod
    def unpack(cls, raw: Any) -> Move:
        target, phase, driver, previous = raw
        if phase not in PHASES:
            raise ValueError(f"unknown move phase {phase!r}")
        return cls(
            tuple(BackendSpec.unpack(b) for b in target),
            str(phase),
            str(driver),
            tuple(BackendSpec.unpack(b) for b in previous),
        )


@dataclass(frozen=True)
class BackendMap:
    version: int
    backends: tuple[BackendSpec, ...]  # current: where keys are read and written
    move: Move | None = None
    _ring: HashRing = field(init=False, repr=False, compare=False)
    _target: HashRing | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.backends:
            raise ConfigError("shared-backend mode needs at least one backend")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ConfigError(f"backend names must be unique, got {names}")
        object.__setattr__(self, "_ring", backend_ring(self.backends))
        target = None
        if self.move is not None and self.move.phase in ("copy", "freeze"):
            target = backend_ring(self.move.target)
        object.__setattr__(self, "_target", target)

    # --- placement ---------------------------------------------------------

    def place(self, key: bytes) -> str:
        """The backend that holds ``key`` now."""
        return self._ring.owner(key)

    def destination(self, key: bytes) -> str:
        """Where ``key`` will be once the move in progress is done (``place`` if none)."""
        return self._target.owner(key) if self._target is not None else self._ring.owner(key)

    def moving(self, key: bytes) -> bool:
        return self._target is not None and self._target.owner(key) != self._ring.owner(key)

    def frozen(self, key: bytes) -> bool:
        """Writes to ``key`` must wait: it is being moved and its last rows copied."""
        return self.move is not None and self.move.phase == "freeze" and self.moving(key)

    def all_specs(self) -> dict[str, BackendSpec]:
        """Every backend a node must keep open under this map."""
        out = {b.name: b for b in self.backends}
        if self.move is not None:
            for b in (*self.move.target, *self.move.previous):
                out.setdefault(b.name, b)
        return out

    def shares(self) -> dict[str, float]:
        return self._ring.shares()

    # --- changes -------------------------------------------------------------

    def start_move(self, target: tuple[BackendSpec, ...], driver: str) -> BackendMap:
        if self.move is not None:
            raise ConfigError("a backend move is in progress already; resume it (timpy backend resume) first")
        return BackendMap(self.version + 1, self.backends, Move(tuple(target), "copy", driver))

    def next_phase(self, driver: str) -> BackendMap:
        """The map after the current phase of the move is done."""
        move = self.move
        if move is None:
            raise ValueError("no move in progress")
        if move.phase == "copy":
            return BackendMap(self.version + 1, self.backends, replace(move, phase="freeze", driver=driver))
        if move.phase == "freeze":
            return BackendMap(
                self.version + 1, move.target, Move(move.target, "cleanup", driver, previous=self.backends)
            )
        return BackendMap(self.version + 1, move.target, None)

    def with_driver(self, driver: str) -> BackendMap:
        assert self.move is not None
        return BackendMap(self.version + 1, self.backends, replace(self.move, driver=driver))

    # --- wire ------------------------------------------------------------------

    def pack(self) -> bytes:
        return msgpack.packb(
            [1, self.version, [b.pack() for b in self.backends], None if self.move is None else self.move.pack()],
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, data: bytes) -> BackendMap:
        fmt, version, backends, move = msgpack.unpackb(data, raw=False)
        if fmt != 1:
            raise ValueError(f"unknown backend map format {fmt}")
        return cls(
            int(version),
            tuple(BackendSpec.unpack(b) for b in backends),
            None if move is None else Move.unpack(move),
        )

    def describe(self) -> dict[str, object]:
        """For status output; URLs shown without their passwords."""
        shares = self.shares()
        return {
            "version": self.version,
            "backends": [
                {"name": b.name, "url": redact_url(b.url), "weight": b.weight, "share": round(shares.get(b.name, 0.0), 4)}
                for b in self.backends
            ],
            "move": None
            if self.move is None
            else {
                "phase": self.move.phase,
                "driver": self.move.driver,
                "target": [b.name for b in self.move.target],
            },
        }


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
