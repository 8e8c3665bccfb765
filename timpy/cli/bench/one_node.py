"""``timpy bench one-node`` (the default): 1:1 pairs through one real node process."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import trio

from timpy.cli.bench.common import (
    check_pairs,
    pairs_result,
    run_pairs,
    show,
    start_node_process,
    stop_node_process,
)


async def one_node(clients: int, messages: int, memory: bool) -> dict:
    check_pairs(clients)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        proc, info = await start_node_process(Path(tmp), memory)
        try:
            figures = await run_pairs([f"tcp://{info['tcp']}"], clients, messages, [proc.pid])
        finally:
            await stop_node_process(proc)
    return pairs_result("one-node 1:1", memory, clients, figures)


@click.command("one-node")
@click.option("--clients", default=20, show_default=True, help="Clients (even), paired to talk 1:1.")
@click.option("--messages", default=200, show_default=True, help="Messages each client sends.")
@click.option("--memory", is_flag=True, help="Run the node with --memory instead of SQLite.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def one_node_cmd(clients: int = 20, messages: int = 200, memory: bool = False, as_json: bool = False) -> None:
    """N clients on one node exchanging 1:1 messages: messages/s, p50/p99 latency."""
    show(trio.run(one_node, clients, messages, memory), as_json)
