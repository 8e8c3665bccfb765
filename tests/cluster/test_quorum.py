"""Whole nodes without a majority refuse, clearly: minority, lone and
cold-started nodes, a node whose seed never answers, a 2-node cluster and
``timpy cluster forget``. In-process clusters (``timpy.testing``) under
trio's mock clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.conftest import PASSWORD
from timpy.cluster.ownership_service import MEMBERS_FILE, load_members
from timpy.cluster.rpc import GIVE_UP_CHECK
from timpy.config import AdminConfig, ClusterConfig, NodeConfig
from timpy.crypto.keys import ClusterKeys
from timpy.errors import Code, RemoteError, TimpyError
from timpy.node.node import Node
from timpy.testing import FAST_SECURITY, MemoryNetwork, open_cluster


async def wait_for(predicate, timeout: float = 60.0) -> None:  # noqa: ANN001
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.1)


async def refused(coro) -> RemoteError:  # noqa: ANN001
    with pytest.raises(RemoteError) as e:
        await coro
    return e.value


async def test_a_minority_refuses_writes_and_never_answers_wrong_password_or_no_such_user(autojump_clock):
    async with open_cluster(5) as cluster:
        for name in ("ann", "ben", "cat"):
            await cluster.register(0, name, PASSWORD)
        cluster.partition({0, 1}, {2, 3, 4})
        split = trio.current_time()
        await wait_for(lambda: not cluster.nodes[0].ownership.has_lease() and not cluster.nodes[1].ownership.has_lease())
        lost_after = trio.current_time() - split
        assert lost_after <= cluster.nodes[0].ownership.config.holder_lease + 0.2
        for i in (0, 1):
            e = await refused(cluster.register(i, "dan", PASSWORD))  # never accepted unchecked
            assert e.code == Code.UNAVAILABLE
            assert "reaches 2 of 5 cluster members; writes need 3" in str(e)
            e = await refused(cluster.register(i, "ann", "another-password"))
            assert e.code == Code.UNAVAILABLE
            e = await refused(cluster.client(i, "ann", PASSWORD).__aenter__())
            assert e.code == Code.UNAVAILABLE  # not BAD_CREDENTIALS
            e = await refused(cluster.client(i, "nobody", PASSWORD).__aenter__())
            assert e.code == Code.UNAVAILABLE  # not NO_SUCH_USER: the owner may be out of reach
        # The majority side goes on: it moves the minority's keys and serves them.
        with trio.fail_after(60):
            while True:
                try:
                    async with cluster.client(2, "ann", PASSWORD) as ann:
                        await ann.send("ben", "during the split", client_id="d1")
                    break
                except RemoteError as exc:
                    assert exc.code == Code.UNAVAILABLE
                    await trio.sleep(0.5)
        cluster.heal()
        await cluster.wait_converged()
        async with cluster.client(0, "ben", PASSWORD) as ben:
            page = await ben.history("ann", limit=10)
        assert [m.body for m in page.messages] == [b"during the split"]


async def test_a_lone_cold_started_node_refuses_and_rejoins_the_members_it_knew(autojump_clock, tmp_path: Path):
    async with open_cluster(3, data_dir=tmp_path) as cluster:
        await cluster.register(0, "eve", PASSWORD)
        await cluster.register(0, "fay", PASSWORD)
        for i in range(3):
            await cluster.kill(i)
        kept = load_members(tmp_path / "node-0")
        assert kept is not None and len(kept[0].voters) == 3
        lone = await cluster.start(0)  # no other node runs: no --join at all
        assert lone.config.cluster.join == ()
        assert set(lone.cluster.seeds) == {cluster.addresses[1], cluster.addresses[2]}
        await trio.sleep(10)
        assert not lone.ownership.has_lease()
        for user, password in (("eve", PASSWORD), ("eve", "wrong-password"), ("nobody", PASSWORD)):
            e = await refused(cluster.client(0, user, password).__aenter__())
            assert e.code == Code.UNAVAILABLE, (user, password, e)
        e = await refused(cluster.register(0, "eve", "taken-over"))
        assert e.code == Code.UNAVAILABLE
        assert "reaches 1 of 3 cluster members" in str(e)
        await cluster.start(1)
        await cluster.start(2)
        await cluster.wait_converged()
        with pytest.raises(RemoteError) as e:
            await cluster.register(0, "eve", "taken-over")
        assert e.value.code == Code.USER_EXISTS
        async with cluster.client(0, "eve", PASSWORD) as eve:
            await eve.send("fay", "back")


async def test_a_node_whose_seed_never_answers_serves_no_writes(autojump_clock):
    net = MemoryNetwork()
    config = NodeConfig(
        memory=True, listen=None, ws=None, security=FAST_SECURITY, admin=AdminConfig(listen=None),
        cluster=ClusterConfig(listen=None, join=("node-9:7072",), probe_interval=0.2),
    )
    node = Node(config, ClusterKeys.generate(), net.transport("node-0:7072"))
    async with trio.open_nursery() as nursery:
        await node._start(nursery)
        await trio.sleep(30)
        assert not node.ownership.has_lease()
        assert len(node.cluster.membership.members) == 1
        with pytest.raises(TimpyError) as e:
            await node.accounts.register("gus", PASSWORD)
        assert e.value.code == Code.UNAVAILABLE
        assert "not joined a cluster yet" in e.value.text
        await node._stop()
        nursery.cancel_scope.cancel()


async def test_two_nodes_survive_nothing_without_an_operator_then_forget(autojump_clock, tmp_path: Path):
    async with open_cluster(2, data_dir=tmp_path) as cluster:
        await cluster.register(0, "hal", PASSWORD)
        await cluster.register(0, "ivy", PASSWORD)
        gone = cluster.node_ids[1]
        with pytest.raises(TimpyError) as e:
            cluster.nodes[0]._forget(gone)  # refused while it is alive
        assert "alive" in e.value.text
        await cluster.kill(1)
        await wait_for(lambda: cluster.nodes[0].cluster.membership.state_of(gone) != "alive")
        survivor = cluster.nodes[0]
        await wait_for(lambda: not survivor.ownership.has_lease(), timeout=5)
        e = await refused(cluster.register(0, "jon", PASSWORD))
        assert "reaches 1 of 2 cluster members; writes need 2" in str(e)
        survivor._forget(gone)
        await wait_for(lambda: survivor.ownership.has_lease() and survivor.ownership.epoch.voters == {survivor.node_id})
        await cluster.register(0, "jon", PASSWORD)
        async with cluster.client(0, "hal", PASSWORD) as hal:
            await hal.send("ivy", "alone now")
        assert (tmp_path / "node-0" / MEMBERS_FILE).exists()
        kept = load_members(tmp_path / "node-0")
        assert kept is not None and kept[0].voters == {survivor.node_id}


async def test_a_dead_member_keeps_its_vote(autojump_clock):
    async with open_cluster(3) as cluster:
        await cluster.kill(2)
        await wait_for(lambda: len(cluster.nodes[0].peers.placement.members) == 2)
        for i in (0, 1):
            assert cluster.node_ids[2] in cluster.nodes[i].ownership.epoch.voters  # off the ring, still a voter
        await wait_for(lambda: cluster.nodes[0].ownership.has_lease())
        await cluster.kill(1)  # one of three voters left: no majority
        await wait_for(lambda: not cluster.nodes[0].ownership.has_lease(), timeout=5)
        e = await refused(cluster.register(0, "kim", PASSWORD))
        assert "reaches 1 of 3 cluster members; writes need 2" in str(e)


async def test_a_request_out_when_the_split_comes_is_refused_within_the_lease(autojump_clock):
    """A send forwarded to an owner across the split was answered only by the
    peer call's timeout (5 s per attempt, then retries); the node now stops
    waiting once its lease has run out, with the majority sentence."""
    from timpy.im import ids

    async with open_cluster(5) as cluster:
        names = [f"user{i}" for i in range(8)]
        for name in names:
            await cluster.register(2, name, PASSWORD)
        node0 = cluster.nodes[0]
        far = {cluster.node_ids[i] for i in (2, 3, 4)}
        pair = next(
            (a, b) for a in names for b in names
            if a != b and node0.peers.owner(
                ids.direct_conversation(node0.indexer, node0.user_id_of(a), node0.user_id_of(b))
            ) in far
        )
        async with cluster.client(0, pair[0], PASSWORD) as sender:
            await sender.send(pair[1], "before the split", client_id="before")
            cluster.partition({0, 1}, {2, 3, 4})
            split = trio.current_time()
            with pytest.raises(RemoteError) as e:
                await sender.send(pair[1], "during the split", client_id="during")
            waited = trio.current_time() - split
        assert e.value.code == Code.UNAVAILABLE
        assert "reaches 2 of 5 cluster members; writes need 3" in str(e.value)
        config = node0.ownership.config
        # The lease runs out at most holder_lease after the last renewal was
        # asked; the round out then learns (within holder_lease / 2) that no
        # majority answers; one check of the call later, it gives up.
        bound = config.holder_lease * 1.5 + config.renew_interval + GIVE_UP_CHECK
        assert waited <= bound, (waited, bound)
