"""The stamp floor: a bound, kept on disk, above every row stamp this node
has given (docs/consistency.md, "Epochs on rows").

The writer never gives a stamp below one it gave before while it runs
(``Writer._stamp``). Across a restart that memory is gone; a machine whose
clock was set back meanwhile would number a slot, in the same ring epoch,
below a write of it the node undid before the restart (never acknowledged)
and whose undo missed a replica, and that undone row would win the merge
over the acknowledged one. So before the writer gives a stamp above the
floor it raises the floor, a little ahead (``AHEAD_MS``, so about once a
minute under load), and writes it to ``stamp.floor`` in the data directory
(atomically, with an fsync); after a restart it starts above it."""

from __future__ import annotations

import os
from pathlib import Path

from timpy.store.digest import STAMP_CLOCK_BITS

FILE = "stamp.floor"
AHEAD_MS = 60_000  # how far ahead of the stamp that needs it the floor is raised


class StampFloor:
    """``value``: no stamp given by this node (in any run) is above it, once
    ``raise_to`` returned for that stamp. ``path`` None: kept in memory only
    (a node that keeps nothing on disk)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.value = 0
        self.writes = 0  # times the floor was written (each an fsync)
        if path is not None and path.exists():
            text = path.read_text().strip()
            try:
                self.value = int(text)
            except ValueError:
                raise ValueError(
                    f"{path} does not hold a whole number ({text[:40]!r}); it is timpy's own file: "
                    "restore it from a backup, or remove it only if this machine's clock was never set back"
                ) from None

    def needs(self, stamp: int) -> bool:
        return stamp > self.value

    def raise_to(self, stamp: int) -> None:
        """Keep a floor at least ``stamp``, ahead by ``AHEAD_MS`` in its clock
        part (the epoch part stays), durably before returning. Blocking: run
        it in a worker thread."""
        floor = max(self.value, stamp + AHEAD_MS)
        if floor >> STAMP_CLOCK_BITS != stamp >> STAMP_CLOCK_BITS:  # the clock part is full: stay in the epoch
            floor = max(self.value, stamp)
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(f"{floor}\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself survives a power loss
            finally:
                os.close(fd)
            self.writes += 1
        self.value = floor
