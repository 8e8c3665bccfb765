"""What more than one ``timpy bench`` command uses: node processes, the
result table, percentiles, process figures, 1:1 pairs through the client
library, and a client on raw frames for the loads the library cannot drive.

Every module of ``timpy.cli.bench`` imports this one and no other of the
package; this one imports none of them."""

from __future__ import annotations

import json
import os
import platform
import resource
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import timpy
from timpy.errors import Code
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

console = Console(stderr=True)
_STAMP = struct.Struct(">d")
_TICK = os.sysconf("SC_CLK_TCK")
C = TypeVar("C")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def show(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
        return
    table = Table(title=f"timpy bench: {result['scenario']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if k != "scenario":
            table.add_row(k, str(v))
    Console().print(table)


def progress_bar() -> Progress:
    """The progress display every bench shows on stderr while it runs."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )


# --- node processes -------------------------------------------------------------


async def start_node_process(
    workdir: Path, memory: bool, extra: str = "", cluster: str = "", peer: bool = True, ws: bool = False
) -> tuple[trio.Process, dict]:
    """Start ``timpy node`` in a child process; return it and its ready-file contents."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.toml"
    config.write_text(
        f'data_dir = "data"\nmemory = {"true" if memory else "false"}\nlisten = "127.0.0.1:0"\nws = "{"127.0.0.1:0" if ws else "off"}"\n'
        f'ready_file = "ready.json"\n{extra}\n'
        "[security]\npassword_opslimit = 1\npassword_memlimit = 8192\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        f'[cluster]\nlisten = "{"127.0.0.1:0" if peer else "off"}"\n{cluster}\n'
    )
    ready = workdir / "ready.json"
    log = open(workdir / "node.log", "wb")  # noqa: SIM115 - closed with the process
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "timpy", "node", "--config", str(config)], stdout=log, stderr=log
    )
    with trio.fail_after(30):
        while not ready.exists():
            if proc.poll() is not None:
                raise click.ClickException(f"the node exited; see {workdir / 'node.log'}")
            await trio.sleep(0.05)
    return proc, json.loads(ready.read_text())


async def stop_node_process(proc: trio.Process) -> None:
    proc.terminate()
    with trio.move_on_after(20):
        await proc.wait()
        return
    proc.kill()


@asynccontextmanager
async def three_node_processes(workdir: Path, memory: bool) -> AsyncIterator[list[dict]]:
    """Three ``timpy node`` processes in one cluster (a new cluster key in
    ``workdir``), each on the full ring and holding its ownership lease;
    yields their ready-file contents and stops them on exit."""
    from timpy.cli.cluster import ask_node
    from timpy.crypto.keys import ClusterKeys, encode_key, write_secret_file

    key = workdir / "cluster.key"
    write_secret_file(key, encode_key(ClusterKeys.generate().root))
    procs: list[trio.Process] = []
    infos: list[dict] = []
    try:
        for i in range(3):
            join = f'join = ["{infos[0]["peer"]}"]' if infos else ""
            proc, info = await start_node_process(
                workdir / f"n{i}", memory, f'cluster_key_file = "{key}"', f"probe_interval = 0.5\n{join}"
            )
            procs.append(proc)
            infos.append(info)
        with trio.fail_after(60):  # every node has the full ring and holds its ownership lease
            for info in infos:
                while True:
                    own = (await ask_node(info["peer"], key)).get("ownership", {})
                    if own.get("lease") and len(own.get("ring_members", ())) == 3:
                        break
                    await trio.sleep(0.1)
        yield infos
    finally:
        for proc in procs:
            await stop_node_process(proc)


# --- figures of processes ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) a process has used, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_ticks() -> tuple[int, int] | None:
    """(busy, all) clock ticks of every core since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all the machine's cores busy between two ``machine_ticks``."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise click.ClickException(f"{need} open files are needed (ulimit -n {need}); the hard limit is {hard}")


# --- 1:1 pairs through the client library ------------------------------------------


def check_pairs(clients: int) -> None:
    if clients < 2 or clients % 2:
        raise click.UsageError("--clients must be an even number of at least 2")


def pairs_result(scenario: str, memory: bool, clients: int, figures: dict) -> dict:
    return {
        "scenario": scenario,
        "storage": "memory" if memory else "sqlite (synchronous=FULL)",
        "clients": clients,
        **figures,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


async def run_pairs(urls: list[str], clients: int, messages: int, node_pids: Sequence[int] = ()) -> dict:
    """Clients in pairs exchanging 1:1 messages; client i connects to
    ``urls[i % len(urls)]``, so with several nodes each pair spans two.

    Besides the rate and the latencies: the CPU the nodes (``node_pids``)
    and this process used per delivered message, and how busy the machine's
    cores were, from the first send to the last delivery (what bounds the
    figure: on a machine whose cores are full, the CPU per message does)."""
    names = [f"bench{i}" for i in range(clients)]
    latencies: list[float] = []
    total = clients * messages
    for n in names:
        await timpy.register(urls[0], n, "bench-password")
    with progress_bar() as progress:
        task = progress.add_task("messages delivered", total=total)
        received = 0
        all_done = trio.Event()

        async def run_client(i: int, ready: trio.Event, go: trio.Event) -> None:
            nonlocal received
            peer = names[i ^ 1]
            async with timpy.connect(urls[i % len(urls)], names[i], "bench-password", device="bench") as c:
                ready.set()
                await go.wait()
                async with trio.open_nursery() as n:

                    async def receive() -> None:
                        nonlocal received
                        got = 0
                        async for m in c.events():
                            latencies.append(time.perf_counter() - _STAMP.unpack_from(m.body)[0])
                            got += 1
                            received += 1
                            progress.advance(task)
                            if received == total:
                                all_done.set()
                            if got == messages:
                                break

                    n.start_soon(receive)
                    for k in range(messages):
                        body = _STAMP.pack(time.perf_counter()) + b"x" * 92
                        await c.send(peer, body, client_id=f"{i}-{k}")
                await all_done.wait()

        async with trio.open_nursery() as nursery:
            go = trio.Event()
            for i in range(clients):
                ready = trio.Event()
                nursery.start_soon(run_client, i, ready, go)
                await ready.wait()
            nodes_cpu0, own_cpu0, ticks0 = sum(cpu_seconds(p) for p in node_pids), self_cpu(), machine_ticks()
            start = time.perf_counter()
            go.set()
            with trio.fail_after(600):
                await all_done.wait()
            elapsed = time.perf_counter() - start
            nodes_cpu, own_cpu = sum(cpu_seconds(p) for p in node_pids) - nodes_cpu0, self_cpu() - own_cpu0
            busy = busy_pct(ticks0, machine_ticks())
    nodes_ms = 1000 * nodes_cpu / total if node_pids and nodes_cpu == nodes_cpu else None  # NaN: a node's /proc gone
    return {
        "messages": total,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(total / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "node_cpu_ms_per_message": None if nodes_ms is None else round(nodes_ms, 3),
        "bench_cpu_ms_per_message": round(1000 * own_cpu / total, 3),
        "machine_busy_pct": busy,
    }


# --- membership in the simulator ---------------------------------------------------


def membership_figures(sizes: list[int], loss: float, seed: int) -> dict:
    from timpy.cluster.simulation import SimNetwork

    result: dict = {"scenario": f"SWIM membership in the simulator, {loss:.0%} loss, 1 s probe rounds"}
    for n in sizes:
        net = SimNetwork(seed=seed, loss=loss)
        net.add("n0")
        for i in range(1, n):
            net.add(f"n{i}", seeds=["n0"])
        start = time.perf_counter()
        took = net.run_until(net.converged, limit=120)
        wall = time.perf_counter() - start
        result[f"converge_{n}_nodes_s"] = None if took is None else round(took, 2)
        result[f"messages_{n}_nodes"] = net.sent
        result[f"wall_{n}_nodes_s"] = round(wall, 2)
        net.crash("n1")
        died = net.run_until(lambda net=net: all(net.nodes[x].state_of("n1") == "dead" for x in net.live()), 180)
        result[f"crash_detected_by_all_{n}_nodes_s"] = None if died is None else round(died, 2)
    return result


# --- a client on raw frames ----------------------------------------------------------
#
# The loads of ``flood``, ``group`` and ``connections`` speak the client
# protocol on raw frames, in one trio loop without the client library, so
# that the generator costs far less per message than the node it measures.


class RawConn:
    """One client connection on raw frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(16 * 1024 * 1024)
        self.pending: list[bytes] = []

    async def request(self, frame: object) -> object:
        """Send a frame and return its answer (the frame with its request id), past any push."""
        await self.stream.send_all(frame_bytes(wp.encode(frame)))
        for _ in range(100_000):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise click.ClickException("the node closed a bench connection during login")
                self.pending.extend(self.decoder.feed(data))
            reply = wp.decode(self.pending.pop(0))
            rid = getattr(frame, "rid", 0)
            if rid and reply.rid == rid:  # the answer to this request (pushes carry rid 0)
                return reply
            if not rid and reply.rid and reply.delivery is None and reply.sync_done is None:
                return reply
        raise click.ClickException("no answer to a bench request")


async def open_raw(host: str, port: int, agent: str = "timpy-flood") -> RawConn:
    """A raw connection, greeted (hello, welcome)."""
    conn = RawConn(await trio.open_tcp_stream(host, port))
    reply = await conn.request(wp.make_frame("hello", rid=1, version=wp.PROTOCOL_VERSION, agent=agent))
    if reply.welcome is None:
        raise click.ClickException(f"the node did not greet the bench client: {reply}")
    return conn


async def login_raw(host: str, port: int, name: str, password: str, device: str) -> RawConn:
    """A raw connection logged in as ``name`` (no sync: nothing stored is sent)."""
    conn = await open_raw(host, port)
    reply = await conn.request(
        wp.make_frame("login", rid=2, name=name, password=password, device=device, no_sync=True)
    )
    if reply.login_ok is None:
        text = reply.error.text if reply.error is not None else str(reply)
        raise click.ClickException(f"{name} could not log in: {text}")
    return conn


async def register_users(host: str, port: int, names: list[str], password: str, progress: Progress) -> None:
    """Register ``names`` with ``password`` over 8 raw connections (a name
    taken already counts as registered: the bench may run again on a node)."""
    task = progress.add_task("registering users", total=len(names))

    async def some(chunk: list[str]) -> None:
        conn = await open_raw(host, port)
        try:
            for name in chunk:
                reply = await conn.request(wp.make_frame("register_", rid=2, name=name, password=password))
                if reply.error is not None and reply.error.code != Code.USER_EXISTS:
                    raise click.ClickException(f"could not register {name}: {reply.error.text}")
                progress.advance(task)
        finally:
            await conn.stream.aclose()

    async with trio.open_nursery() as nursery:
        for k in range(8):
            nursery.start_soon(some, names[k::8])
    progress.remove_task(task)


async def log_in_all(
    names: list[str], log_in: Callable[[str], Awaitable[C]], concurrency: int, progress: Progress, what: str
) -> list[C]:
    """``log_in(name)`` for every name, ``concurrency`` at a time; the
    connections in ``names``' order."""
    task = progress.add_task(what, total=len(names))
    conns: list[C | None] = [None] * len(names)
    gate = trio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            conns[i] = await log_in(names[i])
        progress.advance(task)

    async with trio.open_nursery() as nursery:
        for i in range(len(names)):
            nursery.start_soon(one, i)
    progress.remove_task(task)
    return conns  # type: ignore[return-value]  # every slot is filled once the nursery is done
