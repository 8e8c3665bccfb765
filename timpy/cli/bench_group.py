"""``timpy bench group``: group fan-out on one node.

One node process; N members of one group all online (N client connections
from this process), one sender. Each message's time is from just before the
send until the last member has received it. Registration, group creation and
logins happen before the clock starts.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import click
import trio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import timpy
from timpy.cli.bench import console, percentile, show, start_node_process, stop_node_process

PASSWORD = "bench-password"


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise click.ClickException(f"{need} open files are needed (ulimit -n {need}); the hard limit is {hard}")


async def group_fanout(members: int, messages: int, memory: bool) -> dict:
    _raise_fd_limit(members + 200)
    names = [f"g{i}" for i in range(members)]
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        extra = (
            f"[limits]\nmax_connections = {members + 100}\nmax_group_size = {members + 1}\n"
            "handshake_timeout = 300.0\n"  # thousands of logins queue up on two cores
        )
        proc, info = await start_node_process(Path(tmp), memory, extra)
        url = f"tcp://{info['tcp']}"
        try:
            with Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            ) as progress:
                task = progress.add_task("registering members", total=members + 1)

                async def register_some(chunk: list[str]) -> None:
                    for name in chunk:
                        await timpy.register(url, name, PASSWORD)
                        progress.advance(task)

                async with trio.open_nursery() as nursery:
                    for k in range(8):
                        nursery.start_soon(register_some, names[k::8])
                await timpy.register(url, "sender", PASSWORD)
                progress.advance(task)
                received = [0] * messages
                times: list[float | None] = [None] * messages
                started = [0.0] * messages
                all_in = [trio.Event() for _ in range(messages)]
                connected = 0
                stop = trio.Event()
                task2 = progress.add_task("members logging in", total=members)
                async with timpy.connect(url, "sender", PASSWORD) as sender:
                    group = await sender.create_group("bench", [], policy="invite")
                    for start in range(0, members, 2000):
                        await sender.group("invite", group.group, users=names[start : start + 2000])
                    ready = trio.Event()

                    logins = trio.Semaphore(64)

                    async def member(name: str) -> None:
                        nonlocal connected
                        async with logins:
                            cm = timpy.connect(url, name, PASSWORD, device="bench")
                            c = await cm.__aenter__()
                        try:
                            connected += 1
                            progress.advance(task2)
                            if connected == members:
                                ready.set()
                            async with trio.open_nursery() as inner:

                                async def listen() -> None:
                                    async for m in c.events():
                                        k = int(m.body.split(b" ", 1)[0])
                                        received[k] += 1
                                        if received[k] == members:
                                            times[k] = time.perf_counter() - started[k]
                                            all_in[k].set()

                                inner.start_soon(listen)
                                await stop.wait()
                                inner.cancel_scope.cancel()
                        finally:
                            await cm.__aexit__(None, None, None)

                    async with trio.open_nursery() as nursery:
                        for name in names:  # 64 logins at a time
                            nursery.start_soon(member, name)
                        with trio.fail_after(600):
                            await ready.wait()
                        task3 = progress.add_task("messages fanned out", total=messages)
                        for k in range(messages):
                            started[k] = time.perf_counter()
                            await sender.send_group(group.group, f"{k} " + "x" * 90)
                            with trio.fail_after(120):
                                await all_in[k].wait()
                            progress.advance(task3)
                        stop.set()
        finally:
            await stop_node_process(proc)
    done = [t for t in times if t is not None]
    return {
        "scenario": f"group of {members} members, all online on one node",
        "storage": "memory" if memory else "sqlite (synchronous=FULL)",
        "messages": messages,
        "p50_ms": round(percentile(done, 50) * 1000, 1),
        "p99_ms": round(percentile(done, 99) * 1000, 1),
        "max_ms": round(max(done) * 1000, 1),
        "machine": f"{os.cpu_count()} cores; the {members} clients run in this process, beside the node",
    }


def register(bench: click.Group) -> None:
    @bench.command("group")
    @click.option("--members", default=1000, show_default=True, help="Members of the group, all online.")
    @click.option("--messages", default=20, show_default=True, help="Messages sent to the group, one at a time.")
    @click.option("--memory", is_flag=True, help="Run the node with --memory instead of SQLite.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def group_cmd(members: int, messages: int, memory: bool, as_json: bool) -> None:
        """Group fan-out: p50/p99 time until every member has a message."""
        show(trio.run(group_fanout, members, messages, memory), as_json)
