"""The node's background task host: work handed to it before it runs is
kept and started when it runs; once it has stopped, work is refused, said
in the log, never silently dropped."""

from __future__ import annotations

import logging

import trio
import trio.testing

from timpy.errors import Code, TimpyError
from timpy.im.tasks import TaskHost


async def test_work_spawned_before_the_host_runs_starts_when_it_runs():
    host, ran = TaskHost(), []

    async def note(x: str) -> None:
        ran.append(x)

    assert host.spawn(note, "early")  # the node is starting: kept
    assert ran == []
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        assert host.spawn(note, "running")
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["early", "running"]
        nursery.cancel_scope.cancel()


async def test_work_spawned_after_the_host_stopped_is_refused_and_logged(caplog):
    host = TaskHost()

    async def note() -> None:
        raise AssertionError("must not run")

    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        nursery.cancel_scope.cancel()
    with caplog.at_level(logging.INFO, logger="timpy.tasks"):
        assert not host.spawn(note)
    assert host.refused == 1
    assert any("node stopping" in r.getMessage() and "note" in r.getMessage() for r in caplog.records)


async def test_a_refusal_inside_background_work_is_logged_not_fatal(caplog):
    host = TaskHost()

    async def refused() -> None:
        raise TimpyError("no majority reachable", Code.UNAVAILABLE)

    with caplog.at_level(logging.INFO, logger="timpy.tasks"):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            host.spawn(refused)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert any("no majority reachable" in r.getMessage() for r in caplog.records)
