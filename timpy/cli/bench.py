"""``timpy bench``: measured throughput and latency against a real node process."""

from __future__ import annotations

import json
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import timpy

console = Console(stderr=True)
_STAMP = struct.Struct(">d")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def start_node_process(
    workdir: Path, memory: bool, extra: str = "", cluster: str = "", peer: bool = True
) -> tuple[trio.Process, dict]:
    """Start ``timpy node`` in a child process; return it and its ready-file contents."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.toml"
    config.write_text(
        f'data_dir = "data"\nmemory = {"true" if memory else "false"}\nlisten = "127.0.0.1:0"\nws = "off"\n'
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


async def one_node(clients: int, messages: int, memory: bool) -> dict:
    _check_pairs(clients)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        proc, info = await start_node_process(Path(tmp), memory)
        try:
            figures = await run_pairs([f"tcp://{info['tcp']}"], clients, messages)
        finally:
            await stop_node_process(proc)
    return _pairs_result("one-node 1:1", memory, clients, figures)


def _pairs_result(scenario: str, memory: bool, clients: int, figures: dict) -> dict:
    return {
        "scenario": scenario,
        "storage": "memory" if memory else "sqlite (synchronous=FULL)",
        "clients": clients,
        **figures,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def _check_pairs(clients: int) -> None:
    if clients < 2 or clients % 2:
        raise click.UsageError("--clients must be an even number of at least 2")


async def run_pairs(urls: list[str], clients: int, messages: int) -> dict:
    """Clients in pairs exchanging 1:1 messages; client i connects to
    ``urls[i % len(urls)]``, so with several nodes each pair spans two."""
    names = [f"bench{i}" for i in range(clients)]
    latencies: list[float] = []
    total = clients * messages
    for n in names:
        await timpy.register(urls[0], n, "bench-password")
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
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
            start = time.perf_counter()
            go.set()
            with trio.fail_after(600):
                await all_done.wait()
            elapsed = time.perf_counter() - start
    return {
        "messages": total,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(total / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


async def three_nodes(clients: int, messages: int, memory: bool) -> dict:
    """Cross-node 1:1 traffic through three real node processes (R=3, W=2)."""
    from timpy.cli.cluster import ask_node
    from timpy.crypto.keys import ClusterKeys, encode_key, write_secret_file

    _check_pairs(clients)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        key = Path(tmp) / "cluster.key"
        write_secret_file(key, encode_key(ClusterKeys.generate().root))
        procs: list[trio.Process] = []
        infos: list[dict] = []
        try:
            for i in range(3):
                join = f'join = ["{infos[0]["peer"]}"]' if infos else ""
                proc, info = await start_node_process(
                    Path(tmp) / f"n{i}", memory, f'cluster_key_file = "{key}"', f"probe_interval = 0.5\n{join}"
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
            figures = await run_pairs([f"tcp://{info['tcp']}" for info in infos], clients, messages)
        finally:
            for proc in procs:
                await stop_node_process(proc)
    return _pairs_result("three nodes, cross-node 1:1 (R=3, W=2)", memory, clients, figures)


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


@click.group(invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks against real node processes (default: one-node)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(one_node_cmd)


@bench.command("one-node")
@click.option("--clients", default=20, show_default=True, help="Clients (even), paired to talk 1:1.")
@click.option("--messages", default=200, show_default=True, help="Messages each client sends.")
@click.option("--memory", is_flag=True, help="Run the node with --memory instead of SQLite.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def one_node_cmd(clients: int = 20, messages: int = 200, memory: bool = False, as_json: bool = False) -> None:
    """N clients on one node exchanging 1:1 messages: messages/s, p50/p99 latency."""
    show(trio.run(one_node, clients, messages, memory), as_json)


def codec_rates(iterations: int) -> dict:
    from timpy.wire import jsonmap
    from timpy.wire import protocol as wp
    from timpy.wire.guard import check_binary_struct

    frame = wp.make_frame(
        "send", rid=2, message=wp.Message(client_id="c" * 32, recipient="bob", body=b"x" * 100, ext={"a": "b"}, kind=0)
    )
    data, text = wp.encode(frame), jsonmap.encode_json(frame)

    def rate(fn, n: int = iterations) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return round(n / (time.perf_counter() - start))

    return {
        "scenario": "client frame codecs (send, 100-byte body)",
        "binary_bytes": len(data),
        "json_bytes": len(text),
        "encode_binary_per_s": rate(lambda: wp.encode(frame)),
        "guard_per_s": rate(lambda: check_binary_struct(data)),
        "decode_binary_per_s": rate(lambda: wp.decode(data)),
        "json_round_trip_per_s": rate(lambda: jsonmap.decode_json(jsonmap.encode_json(frame)), max(1, iterations // 3)),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


@bench.command("codec")
@click.option("--iterations", default=30_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def codec_cmd(iterations: int, as_json: bool) -> None:
    """Client frame encode/decode rates on one core."""
    show(codec_rates(iterations), as_json)


def ring_figures(vnodes: int, keys: int) -> dict:
    import statistics

    from timpy.cluster.ring import HashRing

    result: dict = {"scenario": f"hash ring, {vnodes} virtual nodes per member, {keys:,} keys"}
    sample = [i.to_bytes(8, "big") for i in range(keys)]
    for n in (3, 10, 50):
        ring = HashRing.of([f"node{i}" for i in range(n)], vnodes)
        counts = dict.fromkeys(ring.members, 0)
        owners = [ring.owner(k) for k in sample]
        for o in owners:
            counts[o] += 1
        result[f"load_rel_stddev_{n}_nodes"] = round(statistics.pstdev(counts.values()) / (keys / n), 4)
        grown = ring.with_member("node-new")
        moved = sum(o != grown.owner(k) for o, k in zip(owners, sample, strict=True))
        result[f"moved_adding_to_{n}_nodes"] = f"{moved / keys:.4f} (ideal {1 / (n + 1):.4f})"
    return result


@bench.command("ring")
@click.option("--vnodes", default=128, show_default=True)
@click.option("--keys", default=100_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ring_cmd(vnodes: int, keys: int, as_json: bool) -> None:
    """Spread of keys over 3, 10 and 50 members, and what moves when one joins."""
    show(ring_figures(vnodes, keys), as_json)


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


@bench.command("membership")
@click.option("--sizes", default="10,50,200", show_default=True, help="Cluster sizes, comma-separated.")
@click.option("--loss", default=0.0, show_default=True, help="Packet loss probability.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def membership_cmd(sizes: str, loss: float, seed: int, as_json: bool) -> None:
    """Simulated convergence time and crash detection time against cluster size."""
    show(membership_figures([int(s) for s in sizes.split(",")], loss, seed), as_json)


@bench.command("cluster")
@click.option("--clients", default=20, show_default=True, help="Clients (even), paired across nodes.")
@click.option("--messages", default=100, show_default=True, help="Messages each client sends.")
@click.option("--memory", is_flag=True, help="Run the nodes with --memory instead of SQLite.")
@click.option("--sizes", default="10,50,200", show_default=True, help="Simulated cluster sizes for convergence.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def cluster_cmd(clients: int, messages: int, memory: bool, sizes: str, as_json: bool) -> None:
    """Convergence against cluster size (simulator), then cross-node 1:1
    throughput and latency through three real node processes."""
    show(membership_figures([int(x) for x in sizes.split(",") if x], 0.0, 1), as_json)
    show(trio.run(three_nodes, clients, messages, memory), as_json)


def _register_storage_benches() -> None:
    from timpy.cli.bench_storage import register

    register(bench)


_register_storage_benches()


def _register_group_bench() -> None:
    from timpy.cli.bench_group import register

    register(bench)


_register_group_bench()


def _register_paths_bench() -> None:
    from timpy.cli.bench_paths import register

    register(bench)


_register_paths_bench()


def _register_repair_bench() -> None:
    from timpy.cli.bench_repair import register

    register(bench)


_register_repair_bench()


def _register_partition_bench() -> None:
    from timpy.cli.bench_partition import register

    register(bench)


_register_partition_bench()


def _register_webhooks_bench() -> None:
    from timpy.cli.bench_webhooks import register

    register(bench)


def _register_search_bench() -> None:
    from timpy.cli.bench_search import register

    register(bench)


_register_webhooks_bench()
_register_search_bench()


from timpy.cli.bench_failover import failover_cmd  # noqa: E402 - registered last, beside the other bench commands

bench.add_command(failover_cmd)


def _register_flood_bench() -> None:
    from timpy.cli.bench_flood import register

    register(bench)


_register_flood_bench()
