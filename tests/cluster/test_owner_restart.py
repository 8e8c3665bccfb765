"""A user's owner killed and restarted at once (timpy.testing, in memory,
under a mock clock): the user's live terminal on another node keeps
receiving every message, without reconnecting (issue 15, routing records)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.conftest import PASSWORD
from tests.support.clients import send_until_acked
from timpy.im import ids
from timpy.testing import open_cluster


async def test_live_terminal_keeps_receiving_across_an_instant_restart_of_its_users_owner(autojump_clock, tmp_path: Path):
    async with open_cluster(3, data_dir=tmp_path) as cluster:
        await cluster.register(0, "alice", PASSWORD)
        await cluster.register(0, "bob", PASSWORD)
        bob = ids.user_id(cluster.nodes[0].indexer, "bob")
        owner = cluster.node_ids.index(cluster.nodes[0].peers.placement.owner(bob))
        gateway = next(i for i in range(3) if i != owner)
        async with cluster.client(gateway, "alice", PASSWORD) as a, cluster.client(gateway, "bob", PASSWORD) as b:
            await b.wait_synced()
            for i in range(5):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            got = [(await b.next_message(timeout=10)).body for _ in range(5)]
            rings = [cluster.nodes[i].peers.placement.version for i in range(3) if i != owner]
            await cluster.restart(owner)  # killed and started again at once: a new incarnation
            for i in range(5, 15):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            got += [(await b.next_message(timeout=30)).body for _ in range(10)]
            assert got == [f"m{i}".encode() for i in range(15)]
            assert b.closed_reason is None
            # No other node ever saw the owner gone: their rings never changed.
            assert [cluster.nodes[i].peers.placement.version for i in range(3) if i != owner] == rings
            assert cluster.nodes[gateway].routes.resend_requests >= 1


@pytest.mark.parametrize("seed", range(int(os.environ.get("OWNER_SEEDS", "2"))))
async def test_live_terminal_keeps_receiving_when_its_users_owner_was_declared_dead_and_returns(
    autojump_clock, tmp_path: Path, seed: int
):
    """The owner is killed, the others declare it dead and move its users
    (a ring epoch), then it starts again with its data and takes them back
    (another epoch): the terminal on another node receives every message sent
    before, during and after, without reconnecting (issue 15, item 3)."""
    async with open_cluster(5, data_dir=tmp_path, seed=seed) as cluster:
        await cluster.register(0, "alice", PASSWORD)
        await cluster.register(0, "bob", PASSWORD)
        bob = ids.user_id(cluster.nodes[0].indexer, "bob")
        owner = cluster.node_ids.index(cluster.nodes[0].peers.placement.owner(bob))
        gateway = next(i for i in range(5) if i != owner)
        async with cluster.client(gateway, "alice", PASSWORD) as a, cluster.client(gateway, "bob", PASSWORD) as b:
            await b.wait_synced()
            for i in range(3):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            await cluster.kill(owner)
            await cluster.wait_converged()  # declared dead: bob moved to another node
            assert cluster.nodes[gateway].peers.placement.owner(bob) != cluster.node_ids[owner]
            for i in range(3, 6):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            await cluster.start(owner)
            await cluster.wait_converged()  # back on the ring: bob is its own again
            assert cluster.nodes[gateway].peers.placement.owner(bob) == cluster.node_ids[owner]
            for i in range(6, 16):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            got = []
            with trio.move_on_after(60):
                while len(got) < 16:
                    got.append((await b.next_message(timeout=60)).body)
            assert sorted(set(got)) == sorted(f"m{i}".encode() for i in range(16)), got
            assert b.closed_reason is None
