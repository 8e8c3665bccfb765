"""``timpy bench group``: group fan-out on one node.

One node process; N members of one group all online (N client connections
from this process), one sender. Each message's time is from just before the
send until the last member has received it. Registration, group creation and
logins happen before the clock starts.

The members speak the client protocol on raw frames (as ``bench flood``):
logins run in trio, then the measured part runs in one thread on a plain
``epoll`` loop over the same sockets, which finds a message's number in a
delivery's bytes without decoding it. So 10,000 members cost this process a
``recv`` each per message, far below what the node spends on them.
"""

from __future__ import annotations

import os
import select
import socket
import tempfile
import time
from pathlib import Path

import click
import trio

from timpy.cli.bench.common import (
    cpu_seconds,
    loadavg,
    log_in_all,
    login_raw,
    percentile,
    progress_bar,
    raise_fd_limit,
    register_users,
    self_cpu,
    show,
    start_node_process,
    stop_node_process,
)
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

_MAGIC = b"\x01group;"  # starts every body: _MAGIC and the message's number (8 digits)
PASSWORD = "group-password"


def _fan_out_measured(sender: socket.socket, members: list[tuple[socket.socket, FrameDecoder]], group: str,
                      messages: int, timeout: float, advance: object) -> tuple[list[float], list[float]]:
    """In a thread: send each message and wait until every member has it.
    Returns (time to the last member, median member's time) per message."""
    ep = select.epoll()
    by_fd: dict[int, tuple[socket.socket, FrameDecoder]] = {}
    for sock, decoder in members:
        sock.setblocking(False)
        ep.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = (sock, decoder)
    sender.setblocking(True)
    sender_decoder = FrameDecoder(1 << 24)
    last: list[float] = []
    middle: list[float] = []
    try:
        for k in range(messages):
            tag = _MAGIC + b"%08d" % k
            frame = frame_bytes(wp.encode(wp.make_frame(
                "send", rid=100 + k,
                message=wp.Message(client_id=f"g{k}-{os.getpid()}-{time.time_ns()}", conversation=group,
                                   body=tag + b"." * 80, kind=0),
            )))
            got: list[float] = []
            started = time.perf_counter()
            sender.sendall(frame)
            deadline = started + timeout
            while len(got) < len(members):
                wait = deadline - time.perf_counter()
                if wait <= 0:
                    raise click.ClickException(f"message {k} reached {len(got)} of {len(members)} members in {timeout} s")
                for fd, _ in ep.poll(min(wait, 1.0)):
                    sock, decoder = by_fd[fd]
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise click.ClickException("the node closed a member's connection")
                    now = time.perf_counter()
                    for body in decoder.feed(data):
                        if tag in body:
                            got.append(now - started)
            # The sender's ack (and its own terminal's copy) wait in its socket: read them off.
            sender.setblocking(False)
            try:
                while True:
                    data = sender.recv(65536)
                    if not data:
                        break
                    for body in sender_decoder.feed(data):
                        reply = wp.decode(body)
                        if reply.error is not None:
                            raise click.ClickException(f"the send was refused: {reply.error.text}")
            except BlockingIOError:
                pass
            sender.setblocking(True)
            got.sort()
            last.append(got[-1])
            middle.append(got[len(got) // 2])
            advance()  # type: ignore[operator]
    finally:
        ep.close()
    return last, middle


async def group_fanout(members: int, messages: int, memory: bool, timeout: float = 120.0) -> dict:
    raise_fd_limit(members + 300)
    names = [f"g{i}" for i in range(members)]
    load = loadavg()
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        extra = (
            f"[limits]\nmax_connections = {members + 100}\nmax_group_size = {members + 1}\n"
            "handshake_timeout = 300.0\n"  # thousands of logins queue up on two cores
            "rate_per_connection = 1000000.0\nburst_per_connection = 1000000\n"
        )
        progress = progress_bar()
        workdir = Path(tmp)
        if not memory:  # setup: the accounts, stored without an fsync each, then the node restarts at FULL
            proc, info = await start_node_process(workdir, memory, 'sqlite_synchronous = "OFF"\n' + extra)
            try:
                host, _, port_text = info["tcp"].rpartition(":")
                with progress:
                    await register_users(host, int(port_text), [*names, "sender"], PASSWORD, progress)
            finally:
                await stop_node_process(proc)
            (workdir / "ready.json").unlink()
        proc, info = await start_node_process(workdir, memory, extra)
        host, _, port_text = info["tcp"].rpartition(":")
        port = int(port_text)
        conns: list = []
        try:
            with progress:
                if memory:
                    await register_users(host, port, [*names, "sender"], PASSWORD, progress)
                sender = await login_raw(host, port, "sender", PASSWORD, "group")
                reply = await sender.request(wp.make_frame("group_request", wp.thrift.GroupRequest(
                    op="create", name="bench", policy="invite", users=[]), rid=3))
                if reply.group_info is None:
                    raise click.ClickException(f"could not create the group: {reply}")
                group = reply.group_info.group
                for start in range(0, members, 2000):
                    reply = await sender.request(wp.make_frame("group_request", wp.thrift.GroupRequest(
                        op="invite", group=group, users=names[start : start + 2000]), rid=4))
                    if reply.group_info is None:
                        raise click.ClickException(f"could not invite members: {reply}")
                login_started = time.perf_counter()
                conns = await log_in_all(
                    names, lambda name: login_raw(host, port, name, PASSWORD, "group"), 64, progress,
                    "members logging in",
                )
                login_s = time.perf_counter() - login_started
                await trio.sleep(0.5)
                task = progress.add_task("messages fanned out", total=messages)
                socks = [(c.stream.socket, c.decoder) for c in conns]
                # The measured part runs on plain socket objects over trio's
                # descriptors (detached, not closed, when it is done).
                plain = [(socket.socket(fileno=s.fileno()), d) for s, d in socks]
                plain_sender = socket.socket(fileno=sender.stream.socket.fileno())
                node_cpu0, self_cpu0 = cpu_seconds(proc.pid), self_cpu()
                try:
                    last, middle = await trio.to_thread.run_sync(
                        _fan_out_measured, plain_sender, plain, group, messages, timeout,
                        lambda: trio.from_thread.run_sync(progress.advance, task),
                    )
                finally:
                    for s, _ in plain:
                        s.detach()
                    plain_sender.setblocking(False)
                    plain_sender.detach()
                node_cpu = cpu_seconds(proc.pid) - node_cpu0
                own_cpu = self_cpu() - self_cpu0
                for c in [*conns, sender]:
                    await c.stream.aclose()
        finally:
            await stop_node_process(proc)
    return {
        "scenario": f"group of {members} members, all online on one node",
        "storage": "memory" if memory else "sqlite (synchronous=FULL)",
        "messages": messages,
        "p50_ms": round(percentile(last, 50) * 1000, 1),
        "p99_ms": round(percentile(last, 99) * 1000, 1),
        "max_ms": round(max(last) * 1000, 1),
        "median_member_p50_ms": round(percentile(middle, 50) * 1000, 1),
        "node_cpu_ms_per_message": round(1000 * node_cpu / messages, 1),
        "bench_cpu_ms_per_message": round(1000 * own_cpu / messages, 1),
        "member_logins_s": round(login_s, 1),
        "loadavg_at_start": load,
        "machine": f"{os.cpu_count()} cores; the {members} members' connections end in this process, beside the node",
    }


@click.command("group")
@click.option("--members", default=1000, show_default=True, help="Members of the group, all online.")
@click.option("--messages", default=20, show_default=True, help="Messages sent to the group, one at a time.")
@click.option("--memory", is_flag=True, help="Run the node with --memory instead of SQLite.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds one message may take to reach all.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def group_cmd(members: int, messages: int, memory: bool, timeout: float, as_json: bool) -> None:
    """Group fan-out: p50/p99 time until every member has a message."""
    show(trio.run(group_fanout, members, messages, memory, timeout), as_json)
