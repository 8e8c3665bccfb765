"""``timpy bench cluster``: convergence against cluster size in the
simulator, then 1:1 pairs across three real node processes (R=3, W=2)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import trio

from timpy.cli.bench.common import (
    check_pairs,
    membership_figures,
    pairs_result,
    run_pairs,
    show,
    three_node_processes,
)


async def three_nodes(clients: int, messages: int, memory: bool) -> dict:
    """Cross-node 1:1 traffic through three real node processes (R=3, W=2)."""
    check_pairs(clients)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        async with three_node_processes(Path(tmp), memory) as infos:
            figures = await run_pairs(
                [f"tcp://{info['tcp']}" for info in infos], clients, messages, [info["pid"] for info in infos])
    return pairs_result("three nodes, cross-node 1:1 (R=3, W=2)", memory, clients, figures)


@click.command("cluster")
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
