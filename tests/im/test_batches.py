"""BatchedCalls: calls that arrive together run together; one bad call
fails alone; a caller that goes away never strands the others."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from timpy.im.batches import BatchedCalls


class Runner:
    """A batch function that takes ``delay`` seconds and records its batches."""

    def __init__(self, delay: float = 1.0, bad: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.bad = bad
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await trio.sleep(self.delay)
        if any(i in self.bad for i in items):
            raise ValueError(f"bad item in {items}")
        return [i * 10 for i in items]


async def test_calls_that_wait_go_together_in_the_next_batch(autojump_clock):
    run = Runner()
    calls: BatchedCalls[int, int] = BatchedCalls(run)
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await calls.call(i)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i)
            await trio.sleep(0.1 if i == 0 else 0)
    assert results == {i: i * 10 for i in range(6)}
    assert run.batches == [[0], [1, 2, 3, 4, 5]]


async def test_a_bad_call_fails_alone(autojump_clock):
    run = Runner(bad=frozenset({3}))
    calls: BatchedCalls[int, int] = BatchedCalls(run)
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await calls.call(i)
        except ValueError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
            await trio.sleep(0.1 if i == 0 else 0)
    assert isinstance(results.pop(3), ValueError)
    assert results == {0: 0, 1: 10, 2: 20, 4: 40}


# the first runner mid-batch; a caller waiting for its batch; the next runner mid-batch
@pytest.mark.parametrize(("victim", "cancel_at"), [(0, 0.5), (1, 0.5), (1, 1.5)])
async def test_a_caller_that_goes_away_strands_nobody(autojump_clock, victim, cancel_at):
    run = Runner()
    calls: BatchedCalls[int, int] = BatchedCalls(run)
    results: dict[int, int] = {}
    scopes = {i: trio.CancelScope() for i in range(4)}

    async def one(i: int) -> None:
        with scopes[i]:
            results[i] = await calls.call(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        await trio.sleep(0.1)
        for i in (1, 2, 3):
            nursery.start_soon(one, i)
        await trio.sleep(cancel_at - 0.1)
        scopes[victim].cancel()
        with trio.fail_after(10):
            while len(results) < 3:
                await trio.sleep(0.1)
    survivors = {i for i in range(4) if i != victim}
    assert set(results) >= survivors
    if (victim, cancel_at) == (1, 0.5):
        assert [sorted(b) for b in run.batches] == [[0], [2, 3]]  # it left before its batch ran
    assert all(results[i] == i * 10 for i in survivors)
