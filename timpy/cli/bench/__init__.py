"""``timpy bench``: measured throughput and latency against real nodes.

One module per command (two for ``storage``: ``backend`` and ``rebalance``),
each importing only ``common`` of this package; a command's module is
imported when the command is named, so one bench does not load the others."""

from __future__ import annotations

import click

from timpy.cli.lazy import LazyGroup

COMMANDS = {
    "one-node": "timpy.cli.bench.one_node:one_node_cmd",
    "cluster": "timpy.cli.bench.cluster:cluster_cmd",
    "codec": "timpy.cli.bench.codec:codec_cmd",
    "ring": "timpy.cli.bench.ring:ring_cmd",
    "membership": "timpy.cli.bench.membership:membership_cmd",
    "backend": "timpy.cli.bench.storage:backend_cmd",
    "rebalance": "timpy.cli.bench.storage:rebalance_cmd",
    "connections": "timpy.cli.bench.connections:connections_cmd",
    "group": "timpy.cli.bench.group:group_cmd",
    "flood": "timpy.cli.bench.flood:flood_cmd",
    "paths": "timpy.cli.bench.paths:paths_cmd",
    "repair": "timpy.cli.bench.repair:repair_cmd",
    "partition": "timpy.cli.bench.partition:partition_cmd",
    "files": "timpy.cli.bench.files:files_cmd",
    "webhooks": "timpy.cli.bench.webhooks:webhooks_cmd",
    "search": "timpy.cli.bench.search:search_cmd",
    "failover": "timpy.cli.bench.failover:failover_cmd",
    "pages": "timpy.cli.bench.pages:pages_cmd",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks against real node processes (default: one-node)."""
    if ctx.invoked_subcommand is None:
        one_node = bench.get_command(ctx, "one-node")
        assert one_node is not None
        ctx.invoke(one_node)
