"""``timpy bench paths``: what a relay costs against direct TCP.

Three real peer transports on loopback, each with the RPC layer the node uses:
a caller, a relay, and a target whose advertised address cannot be dialled (as
behind NAT), so the caller reaches it through the relay; then the same target
dialled directly. For each path: sequential round trips (latency) and
pipelined requests of a given size (throughput). ICE paths need network
namespaces and are exercised by tests/e2e/test_nat.py, not measured here.
"""

from __future__ import annotations

import time

import click
import nacl.signing
import trio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from timpy.cli.bench.common import percentile, show
from timpy.cluster import catalog, codec
from timpy.cluster.rpc import Rpc, is_rpc
from timpy.cluster.transport import NatSettings, TcpPeerTransport
from timpy.crypto.keys import ClusterKeys


async def _pump(transport: TcpPeerTransport, rpc: Rpc) -> None:
    async for payload in transport.incoming:
        raw = codec.unpack(payload)
        if is_rpc(raw):
            rpc.receive(raw)


async def _measure(rpc: Rpc, address: str, calls: int, size: int, window: int, progress: Progress, label: str) -> dict:
    body = catalog.Echo(b"x" * size)
    await rpc.call(address, catalog.ECHO, catalog.Echo(b"warm-up"), timeout=15)
    task = progress.add_task(f"{label}: round trips", total=calls)
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await rpc.call(address, catalog.ECHO, catalog.Echo(b"ping"), timeout=15)
        latencies.append((time.perf_counter() - t0) * 1000)
        progress.advance(task)
    task = progress.add_task(f"{label}: {size} B pipelined", total=calls)
    t0 = time.perf_counter()
    for start in range(0, calls, window):
        pending = [rpc.start_call(address, catalog.ECHO, body) for _ in range(min(window, calls - start))]
        for call in pending:
            await call.result(15)
        progress.advance(task, len(pending))
    seconds = time.perf_counter() - t0
    return {
        f"{label} round trip p50 ms": round(percentile(latencies, 50), 3),
        f"{label} round trip p99 ms": round(percentile(latencies, 99), 3),
        f"{label} requests/s ({size} B, {window} in flight)": round(calls / seconds),
        f"{label} MB/s each way": round(calls * size / seconds / 1e6, 2),
    }


async def path_figures(calls: int, size: int, window: int) -> dict:
    keys = ClusterKeys(b"b" * 32)

    def make(advertise: str | None = None) -> tuple[TcpPeerTransport, Rpc]:
        t = TcpPeerTransport(keys, nacl.signing.SigningKey.generate(), listen="127.0.0.1:0", queue=4096,
                             advertise=advertise, nat=NatSettings(ice=False))
        return t, Rpc(t)

    (caller, caller_rpc), (relay, relay_rpc) = make(), make()
    (hidden, hidden_rpc), (direct, direct_rpc) = make("127.0.0.1:1"), make()
    result: dict = {"scenario": f"peer paths on loopback, {calls} requests per figure"}
    async with trio.open_nursery() as nursery:
        for t, rpc in ((caller, caller_rpc), (relay, relay_rpc), (hidden, hidden_rpc), (direct, direct_rpc)):
            await nursery.start(t.run)
            await nursery.start(rpc.run)
            nursery.start_soon(_pump, t, rpc)
            rpc.serve(catalog.ECHO, lambda echo: echo.body)
        # the hidden target dials out to the relay, as a node behind NAT does
        await hidden_rpc.call(relay.address, catalog.ECHO, catalog.Echo(b"join"), timeout=15)
        await caller_rpc.call(relay.address, catalog.ECHO, catalog.Echo(b"join"), timeout=15)  # relays are peers with live channels
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as p:
            result.update(await _measure(caller_rpc, direct.address, calls, size, window, p, "direct TCP"))
            result.update(await _measure(caller_rpc, "127.0.0.1:1", calls, size, window, p, "relayed"))
        assert caller.paths()["127.0.0.1:1"].kind == "relay", "the target was not relayed"
        nursery.cancel_scope.cancel()
    return result


@click.command("paths")
@click.option("--calls", default=2000, show_default=True, help="Requests per figure.")
@click.option("--size", default=1024, show_default=True, help="Bytes per pipelined request.")
@click.option("--window", default=64, show_default=True, help="Pipelined requests in flight.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def paths_cmd(calls: int, size: int, window: int, as_json: bool) -> None:
    """Round trips and throughput over direct TCP and through a relay (loopback)."""
    show(trio.run(path_figures, calls, size, window), as_json)
