"""Several in-process nodes in one trio program over real TCP peer channels:
membership timings fast enough for tests, a cluster of them joined through
the first, and waiting until every node agrees on the ring."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import trio

import timpy
from tests.conftest import node_config
from timpy.config import ClusterConfig
from timpy.crypto.keys import ClusterKeys

FAST_CLUSTER = dict(listen="127.0.0.1:0", probe_interval=0.2, probe_timeout=0.1, push_pull_interval=2.0,
                    anti_entropy_interval=5.0)


def cluster_config(join: tuple[str, ...] = (), **extra: object) -> timpy.NodeConfig:
    return node_config(cluster=ClusterConfig(join=join, **{**FAST_CLUSTER, **extra}))


async def wait_for_ring(nodes: list[timpy.Node], timeout: float = 30.0) -> None:
    """Until every node places keys on exactly these nodes and holds its ownership lease."""
    ids_ = {n.node_id for n in nodes}
    with trio.fail_after(timeout):
        while not all(n.peers.placement.members == ids_ and n.ownership.has_lease() for n in nodes):
            await trio.sleep(0.05)


@asynccontextmanager
async def cluster(count: int, **extra: object):
    keys = ClusterKeys.generate()
    async with AsyncExitStack() as stack:
        nodes: list[timpy.Node] = []
        for _ in range(count):
            join = (nodes[0].peer_address,) if nodes else ()
            nodes.append(await stack.enter_async_context(timpy.open_node(cluster_config(join, **extra), keys=keys)))
        await wait_for_ring(nodes)
        yield nodes, keys, stack
