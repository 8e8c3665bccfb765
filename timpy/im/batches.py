"""Calls that arrive together, run together: one storage transaction (one
commit, one fsync on SQLite) for many requests of the same kind.

The first caller runs a batch of one; whoever arrives while a batch runs
waits, and the first of them runs the next batch with everyone who waited.
No task of its own: the runner is always a caller. A batch runs shielded
from its runner's cancellation (it is bounded storage work whose results
others wait for); a runner that goes away before its turn hands the turn
on. A batch that fails is run again one call at a time, so one bad call
fails alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "done", "turn", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = trio.Event()
        self.turn = False  # woken to run the next batch, not with a result
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class BatchedCalls(Generic[T, R]):
    """``await call(item)`` -> ``run([items...])[i]``, items that wait for
    the same batch sharing one ``run``."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._queue: list[_Slot[T, R]] = []
        self._running = False
        self.batches = 0  # batches run (metrics, tests)

    async def call(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        self._queue.append(slot)
        if self._running:
            try:
                await slot.done.wait()
            except BaseException:
                if slot in self._queue:
                    self._queue.remove(slot)
                if slot.turn:
                    self._pass_turn()
                raise
            if not slot.turn:
                return slot.outcome()
        self._running = True
        batch, self._queue = self._queue, []
        try:
            with trio.CancelScope(shield=True):
                await self._run_batch(batch)
        finally:
            for s in batch:
                if s is not slot:
                    s.done.set()
            self._pass_turn()
        return slot.outcome()

    async def _run_batch(self, batch: list[_Slot[T, R]]) -> None:
        self.batches += 1
        try:
            results = await self._run([s.item for s in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for s in batch:  # one at a time: a bad one fails alone
                await self._run_batch([s])
            return
        for s, r in zip(batch, results, strict=True):
            s.result = r

    def _pass_turn(self) -> None:
        if self._queue:
            nxt = self._queue[0]
            nxt.turn = True
            nxt.done.set()
        else:
            self._running = False
