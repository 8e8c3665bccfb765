"""The node's host for short background work (notifications, resyncs, the
acks of a connection's pipelined sends), with a lifetime that says what
happens to work handed to it at every moment:

- before the host runs (the node is starting: peers may already call in),
  work is kept and started as soon as it runs;
- while it runs, work starts at once, in the host's nursery;
- once it has stopped (the node's last phase: connections, the writer and
  the cluster tasks have ended), work is refused: ``spawn`` returns False
  and logs what it refused, so a caller that must not lose it does it
  itself (the gateway acknowledges in the connection's own task).

Background work is best effort: a ``TimpyError`` it raises (say, no
majority reachable) is logged, never fatal to the node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from timpy.errors import TimpyError

log = logging.getLogger("timpy.tasks")


class TaskHost:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._early: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._stopped = False
        self.refused = 0  # work refused after the host stopped

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def spawn(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background. False (and logged) once the host has stopped."""
        if self._nursery is not None:
            self._nursery.start_soon(_best_effort, fn, *args)
            return True
        if self._stopped:
            self.refused += 1
            log.info("node stopping: %s not started", getattr(fn, "__qualname__", fn))
            return False
        self._early.append((fn, args))
        return True

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host background work until cancelled; then refuse new work."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                early, self._early = self._early, []
                for fn, args in early:
                    nursery.start_soon(_best_effort, fn, *args)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._stopped = True
        finally:
            self._nursery = None
            self._stopped = True
            if self._early:
                log.info("node stopping: %d background task(s) never started", len(self._early))
                self.refused += len(self._early)
                self._early.clear()


async def _best_effort(fn: Callable[..., Any], *args: Any) -> None:
    try:
        await fn(*args)
    except TimpyError as exc:
        log.info("background work dropped: %s", exc.text)
