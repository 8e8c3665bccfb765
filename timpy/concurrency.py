"""Structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
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
    """Run ``fn(*args)`` in a worker thread (trio's thread cache, under
    ``limiter`` or trio's default limiter) and wait for it, uncancellably as
    ``trio.to_thread.run_sync`` does by default; or call it in this thread
    inside ``inline_workers``.

    ``trio.to_thread.run_sync`` does more per call than a node's storage
    calls need: it names the worker thread after the calling task, in Python
    and in the kernel (a string built and two ``pthread_setname_np`` calls a
    call), copies the caller's context variables and sets up what
    ``trio.from_thread`` needs. ``fn`` here gets none of that: it must not
    call back into trio (``trio.from_thread``) nor read the caller's context
    variables; the storage and password functions passed here do neither."""
    if _INLINE_WORKERS.get():
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return fn(*args)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()
    if limiter is None:
        limiter = trio.to_thread.current_default_thread_limiter()
    borrower = _Borrower()
    await limiter.acquire_on_behalf_of(borrower)  # a checkpoint: a cancelled caller stops here
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: Any) -> None:  # an ``outcome.Outcome``
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(partial(fn, *args) if args else fn, deliver)
        # ``deliver`` reschedules this task with the call's outcome: its value comes back, its error is raised
        result: T = await trio.lowlevel.wait_task_rescheduled(_no_abort)
    finally:
        limiter.release_on_behalf_of(borrower)
    return result


class _Borrower:
    """What holds a limiter's token while one worker call runs."""

    __slots__ = ()


def _no_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the thread runs to its end; its caller waits for it


async def yield_share(started: float, share: float, longest: float) -> None:
    """Pause a background loop whose round began at ``started`` (trio time)
    so that its rounds take at most ``share`` of the time, and never longer
    than ``longest`` seconds: work that coalesces (a conversation list's
    notices, search indexing) then leaves the loop and the store thread to
    the writer under load, and does more per round instead of more rounds."""
    spent = trio.current_time() - started
    await trio.sleep(min(spent * (1 - share) / share, longest))


class Settled:
    """A ``trio.Event`` for a result most often known before anyone waits
    for it: the writer's pending sends. ``set``, ``is_set`` and ``wait`` as an
    Event's (``wait`` on a set one still checkpoints); the Event behind it is
    made only for a task that waits before it is set. A flood built one Event
    per message (about 2% of the node's time under the interpreter lock),
    while an ack waits at most once per writer batch."""

    __slots__ = ("_done", "_event")

    def __init__(self) -> None:
        self._done = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._done

    def set(self) -> None:
        self._done = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._done:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()
