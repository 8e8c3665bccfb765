"""``timpy bench partition``: what a split costs, measured on whole nodes.

N full nodes run in one process over ``timpy.testing``'s in-memory network
under trio's mock clock (times are virtual seconds: protocol time, not this
machine's speed). They start as a cluster that ran before (every node a
voter, SQLite files in a temporary directory: ``open_cluster(formed=True)``)
rather than joining one voter at a time, a lease apart, which for 50 nodes
was most of the run. The network splits into a minority of (N-1)//2 nodes and
a majority. Measured from the split:

- how long until every minority node refuses writes (its lease ran out);
- how long until the majority serves a conversation whose owner was on the
  minority side (a send through a majority node is acknowledged);
- how long after the heal until every node holds its lease on the full ring;
- whether the message acknowledged before the split kept its seq (the one
  sent during the split was numbered after it).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
import trio

from timpy.cli.bench.common import show


async def _split(n: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="timpy-bench-partition-") as tmp:
        return await _split_in(n, seed, Path(tmp))


async def _split_in(n: int, seed: int, data_dir: Path) -> dict[str, Any]:
    from timpy.errors import TimpyError
    from timpy.im import ids
    from timpy.testing import open_cluster

    password = "bench-partition"
    async with open_cluster(n, seed=seed, data_dir=data_dir, formed=True) as cluster:
        nodes = cluster.nodes
        minority = set(range((n - 1) // 2))
        majority = set(range(n)) - minority
        minority_ids = {cluster.node_ids[i] for i in minority}
        # Two users whose conversation is owned on the minority side. Each key
        # a send writes (the conversation, both inboxes) has two of its three
        # replicas on the majority's side: a key most of whose replicas are
        # across the split is refused until it heals (docs/consistency.md).
        placement, idx = nodes[0].peers.placement, nodes[0].indexer

        def servable(key: bytes) -> bool:
            return len(set(placement.replicas(key)) - minority_ids) >= 2

        sender = next((f"s{j}" for j in range(200) if servable(ids.user_id(idx, f"s{j}"))), "u0")
        await cluster.register(min(majority), sender, password)
        recipient = ""
        for k in range(1, 400):
            name = f"u{k}"
            uid = ids.user_id(idx, name)
            conv = ids.direct_conversation(idx, ids.user_id(idx, sender), uid)
            if placement.owner(conv) in minority_ids and servable(conv) and servable(uid):
                recipient = name
                break
        if not recipient:
            raise click.ClickException("found no conversation owned on the minority side")
        await cluster.register(min(majority), recipient, password)
        async with cluster.client(min(majority), sender, password) as c:
            before = await c.send(recipient, "before", client_id="before")
        split = trio.current_time()
        cluster.partition(minority, majority)
        refused_at = moved_at = None
        with trio.fail_after(300):
            while refused_at is None:
                if all(not nodes[i].ownership.has_lease() for i in minority):
                    refused_at = trio.current_time() - split
                await trio.sleep(0.01)
            attempt = 0
            while moved_at is None:
                attempt += 1
                try:
                    async with cluster.client(max(majority), sender, password) as c:
                        during = await c.send(recipient, "during", client_id="during")
                    moved_at = trio.current_time() - split
                except TimpyError:
                    await trio.sleep(0.1)
        heal = trio.current_time()
        cluster.heal()
        await cluster.wait_converged(timeout=300)
        whole_at = trio.current_time() - heal
    return {
        f"minority_refuses_{n}_nodes_s": round(refused_at, 2),
        f"majority_serves_moved_key_{n}_nodes_s": round(moved_at, 2),
        f"whole_again_after_heal_{n}_nodes_s": round(whole_at, 2),
        # The promise, checked on the way: the moved conversation's new owner
        # numbered after the message acknowledged before the split.
        f"acknowledged_message_kept_{n}_nodes": during.seq > before.seq,
    }


def partition_figures(sizes: list[int], seed: int) -> dict[str, Any]:
    from timpy.testing import run

    result: dict[str, Any] = {"scenario": "split into (N-1)//2 and the rest; virtual seconds under the mock clock"}
    for n in sizes:
        start = time.perf_counter()
        result.update(run(_split, n, seed))
        result[f"wall_{n}_nodes_s"] = round(time.perf_counter() - start, 1)
    return result


@click.command("partition")
@click.option("--sizes", default="5,9", show_default=True, help="Cluster sizes, comma-separated.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def partition_cmd(sizes: str, seed: int, as_json: bool) -> None:
    """Time until a minority refuses and the majority serves moved keys, on whole in-process nodes."""
    show(partition_figures([int(s) for s in sizes.split(",") if s], seed), as_json)
