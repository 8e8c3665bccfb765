"""``timpy.concurrency.to_worker``: a call in a worker thread, as
``trio.to_thread.run_sync`` makes it, without naming the thread per call."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from timpy.concurrency import inline_workers, to_worker


async def test_the_call_runs_in_another_thread_and_returns_its_value_or_raises_its_error():
    here = threading.get_ident()
    assert await to_worker(lambda a, b: (a + b, threading.get_ident() != here), 2, 3) == (5, True)

    def fails() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await to_worker(fails)


async def test_the_limiter_bounds_the_calls_at_once_and_is_given_back():
    limiter = trio.CapacityLimiter(2)
    lock = threading.Lock()
    running, most = 0, 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.02)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(lambda: to_worker(work, limiter=limiter))
    assert most == 2
    assert limiter.borrowed_tokens == 0


async def test_a_cancelled_caller_waits_for_its_call_to_end_and_then_sees_the_cancellation():
    finished = threading.Event()

    def slow() -> None:
        threading.Event().wait(0.2)
        finished.set()

    with trio.move_on_after(0.05) as scope:
        await to_worker(slow)
        await trio.sleep(1)  # the cancellation is delivered at the next checkpoint
    assert scope.cancelled_caught and finished.is_set()

    with trio.CancelScope() as cancelled:
        cancelled.cancel()
        await to_worker(finished.clear)  # cancelled before it starts: never runs
    assert finished.is_set()


async def test_the_worker_thread_keeps_its_name():
    names: set[str] = set()
    for _ in range(3):
        names.add(await to_worker(lambda: threading.current_thread().name))
    assert all(name.startswith("Trio thread") for name in names)


async def test_inline_workers_call_in_this_thread():
    with inline_workers():
        assert await to_worker(threading.get_ident) == threading.get_ident()


async def test_settled_is_an_event_made_only_for_a_waiter():
    from timpy.concurrency import Settled

    early = Settled()
    early.set()
    assert early.is_set()
    with trio.testing.assert_checkpoints():
        await early.wait()  # set already: no Event, but still a checkpoint
    assert early._event is None

    late = Settled()
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await late.wait()
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert not late.is_set() and woken == []
        late.set()
    assert sorted(woken) == ["a", "b"] and late.is_set()

    with trio.move_on_after(0.01) as scope:  # an unset one waits (and can be cancelled)
        await Settled().wait()
    assert scope.cancelled_caught
