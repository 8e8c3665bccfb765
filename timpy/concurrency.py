"""Structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

T = TypeVar("T")


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Raise a lone exception from a nursery as itself, not as a group.

    The public context managers (``open_node``, ``connect``) run the caller's
    block inside a nursery; without this, ``except RemoteError`` around them
    would never match.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


_INLINE_WORKERS: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("timpy_inline_workers", default=False)


@contextmanager
def inline_workers() -> Iterator[None]:
    """Inside the block, ``to_worker`` calls of this trio run happen in the trio thread.

    For deterministic tests under ``trio.testing.MockClock``: with autojump, the
    clock jumps whenever every task waits, and a task waiting for a worker
    thread counts as waiting, so timeouts would fire while a thread works. Run
    inline, storage and password hashing take no virtual time. ``timpy.testing``
    turns this on around its clusters; a real node never does."""
    token = _INLINE_WORKERS.set(True)
    try:
        yield
    finally:
        _INLINE_WORKERS.reset(token)


async def to_worker(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
    """``trio.to_thread.run_sync``, or a plain call inside ``inline_workers``."""
    if not _INLINE_WORKERS.get():
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return fn(*args)
    finally:
        await trio.lowlevel.cancel_shielded_checkpoint()


async def yield_share(started: float, share: float, longest: float) -> None:
    """Pause a background loop whose round began at ``started`` (trio time)
    so that its rounds take at most ``share`` of the time, and never longer
    than ``longest`` seconds: work that coalesces (a conversation list's
    notices, search indexing) then leaves the loop and the store thread to
    the writer under load, and does more per round instead of more rounds."""
    spent = trio.current_time() - started
    await trio.sleep(min(spent * (1 - share) / share, longest))
