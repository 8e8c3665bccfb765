"""Catch-up hears from the key's replicas in every ring since the key was
last known settled, not only the previous ring (docs/consistency.md).

Seven whole nodes over ``timpy.testing``'s memory network, under a mock
clock, R = 3, W = 2. A message is acknowledged on two of its conversation's
three replicas (the third missed the copy). Then the two that hold it are cut
off, one ring epoch at a time, and repair does not get to the key in between
(it is switched off: in a large cluster the next ring change comes before
repair reaches the key), then a third node. After the third change, the key's replicas in the
current ring and in the previous one are nodes that never held the message:
catching up from the previous ring alone, the new owner heard "enough"
replicas, numbered from an empty copy, and put a new message at the
acknowledged one's seq (what ``timpy bench partition --sizes 50`` showed).
The new owner must refuse instead."""

from __future__ import annotations

import pytest
import trio
from sqlalchemy import select

import timpy
from tests.conftest import PASSWORD
from tests.support.clients import send_until_acked
from timpy.im import ids
from timpy.im.replication import Replicator
from timpy.store import schema as s
from timpy.testing import open_cluster


def has_seq(node, conv: bytes, seq: int) -> bool:  # noqa: ANN001 - a timpy Node
    m = s.messages
    with node.store.repo.engine.connect() as conn:
        return conn.execute(select(m.c.seq).where(m.c.conv_id == conv, m.c.seq == seq)).first() is not None


def dedup_at(node, conv: bytes, seq: int) -> bytes:  # noqa: ANN001 - a timpy Node
    m = s.messages
    with node.store.repo.engine.connect() as conn:
        return bytes(conn.execute(select(m.c.dedup).where(m.c.conv_id == conv, m.c.seq == seq)).scalar_one())


async def wait_off_ring(cluster, majority: list[int], gone: int) -> None:  # noqa: ANN001
    name = cluster.node_ids[gone]
    with trio.fail_after(300):
        while not all(
            name not in cluster.nodes[i].peers.placement.members and cluster.nodes[i].ownership.has_lease()
            for i in majority
        ):
            await trio.sleep(0.1)


async def no_repair(self) -> None:  # noqa: ANN001 - in a large cluster the next ring change comes before repair
    return None


@pytest.fixture
def repair_off(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setattr(Replicator, "repair_pass", no_repair)


async def acknowledged_on_two(cluster) -> tuple[bytes, int, int, int, list[int], int, bytes]:  # noqa: ANN001
    """ann's first message to ben, acknowledged on two of the conversation's
    three replicas (the third missed the copy: W = 2). Returns the
    conversation, its owner, second and third replicas, the other nodes, one
    of them that is not the third (``via``), and the message's dedup index."""
    await cluster.register(0, "ann", PASSWORD)
    await cluster.register(0, "ben", PASSWORD)
    idx = cluster.nodes[0].indexer
    conv = ids.direct_conversation(idx, ids.user_id(idx, "ann"), ids.user_id(idx, "ben"))
    owner, second, third = (cluster.node_ids.index(n) for n in cluster.nodes[0].peers.placement.replicas(conv))
    rest = [i for i in range(len(cluster.node_ids)) if i not in (owner, second)]
    via = next(i for i in rest if i != third)
    async with cluster.client(via, "ann", PASSWORD) as a:
        await send_until_acked(a, "ben", "before", "c0")
    dedup = await cluster.nodes[owner].store.run(dedup_at, cluster.nodes[owner], conv, 1)
    third_repo = cluster.nodes[third].store.repo
    await cluster.nodes[third].store.run(third_repo.undo_writes, [(conv, 1, dedup)], [])
    assert has_seq(cluster.nodes[owner], conv, 1) and has_seq(cluster.nodes[second], conv, 1)
    assert not has_seq(cluster.nodes[third], conv, 1)
    return conv, owner, second, third, rest, via, dedup


async def refused(cluster, via: int) -> None:  # noqa: ANN001
    """A send to the conversation is refused: its acknowledged message is out of reach."""
    async with cluster.client(via, "ann", PASSWORD) as a:
        try:
            await a.send("ben", "during", client_id="c1")
        except timpy.RemoteError as exc:
            assert exc.code == timpy.Code.UNAVAILABLE
        else:
            raise AssertionError("numbered a message while the acknowledged one was out of reach")


async def test_an_acknowledged_message_survives_its_holders_leaving_the_ring_one_epoch_at_a_time(
    autojump_clock, repair_off
):
    async with open_cluster(7, seed=11) as cluster:
        await cluster.wait_converged(300)
        conv, owner, second, third, rest, via, dedup = await acknowledged_on_two(cluster)

        cluster.partition([owner], [second, *rest])
        await wait_off_ring(cluster, [second, *rest], owner)
        cluster.partition([owner], [second], rest)
        await wait_off_ring(cluster, rest, second)
        extra = next(i for i in rest if i not in (via, third))  # one more change: 4 of the 7 voters remain
        majority = [i for i in rest if i != extra]
        cluster.partition([owner], [second], [extra], majority)
        await wait_off_ring(cluster, majority, extra)
        placement = cluster.nodes[via].peers.placement
        held = {cluster.node_ids[owner], cluster.node_ids[second]}
        assert not held & set(placement.replicas(conv))
        assert not held & set(placement.previous_replicas(conv))  # the previous ring does not know them either

        await refused(cluster, via)

        # Nothing was numbered over it on the majority's side.
        for i in rest:
            assert not has_seq(cluster.nodes[i], conv, 1) or dedup_at(cluster.nodes[i], conv, 1) == dedup

        # The split heals: the next send follows the acknowledged message.
        cluster.heal()
        await cluster.wait_converged(300)
        async with cluster.client(via, "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "after", "c2")
            history = (await a.history("ben")).messages
        assert [m.body for m in history][:1] == [b"before"], history
        assert [m.seq for m in history] == list(range(1, len(history) + 1))
        assert b"after" in [m.body for m in history]


async def test_rings_leave_the_history_with_the_next_ring_change_once_every_member_finished_a_repair_pass(
    autojump_clock,
):
    """The members tell the voters of their finished repair passes; the
    proposer then leaves the rings every key has left out of the next epoch,
    and catch-up no longer waits on them. No epoch is made for that alone
    (each revokes every lease): it waits for the next change of the ring."""
    async with open_cluster(5, seed=5) as cluster:
        await cluster.wait_converged(300)
        await cluster.kill(4)
        await cluster.wait_converged(300)
        live = [cluster.node_ids[i] for i in range(4)]
        everyone = frozenset(cluster.node_ids)
        for i in range(4):
            assert everyone in [r.members for r in cluster.nodes[i].peers.placement.history]
        number = cluster.nodes[0].ownership.core.epoch.number
        with trio.fail_after(300):  # every member finished a pass under this epoch, and the voters know it
            while not all(
                cluster.nodes[i].ownership.core.repaired.get(m, 0) >= number for i in range(4) for m in live
            ):
                await trio.sleep(0.5)
        await trio.sleep(10)
        for i in range(4):  # the ring did not change: no epoch only to drop the history
            assert cluster.nodes[i].ownership.core.epoch.number == number
        await cluster.kill(3)
        await cluster.wait_converged(300)
        for i in range(3):
            placement = cluster.nodes[i].peers.placement
            assert placement.members == frozenset(live[:3])
            assert [r.members for r in placement.history] == [frozenset(live)]  # the ring of five is gone


async def test_a_ring_change_that_would_drop_an_unsettled_ring_waits_and_the_message_is_kept(
    autojump_clock, monkeypatch
):
    """The same steps with the history cap at one ring (``MAX_RINGS``, 16 in
    a real cluster), once every member finished a repair pass (the rings of
    the cluster's forming leave the history with the first change): once the
    first holder is off the ring, the second one's leaving would drop the
    ring of seven, where the acknowledged message is. Dropping it is what
    lost messages before (the majority's next owner heard "enough" replicas,
    none of which held it; this test fails so when the oldest ring is
    dropped). The change waits instead (the proposer's status says so), the
    key answers UNAVAILABLE, and after the heal the message is still first.
    With repair back, the ring of seven settles and the ring changes again."""
    from timpy.cluster import ownership

    real_pass = Replicator.repair_pass
    async with open_cluster(7, seed=11) as cluster:
        await cluster.wait_converged(300)
        number = cluster.nodes[0].ownership.core.epoch.number
        with trio.fail_after(300):  # every member finished a pass under this epoch, and the voters know it
            while not all(
                n.ownership.core.repaired.get(m, 0) >= number for n in cluster.nodes for m in cluster.node_ids
            ):
                await trio.sleep(0.5)
        monkeypatch.setattr(Replicator, "repair_pass", no_repair)
        monkeypatch.setattr(ownership, "MAX_RINGS", 1)
        await trio.sleep(30)  # a pass under way ends
        conv, owner, second, third, rest, via, dedup = await acknowledged_on_two(cluster)

        cluster.partition([owner], [second, *rest])
        await wait_off_ring(cluster, [second, *rest], owner)
        seven = frozenset(cluster.node_ids)
        assert [r.members for r in cluster.nodes[via].peers.placement.history] == [seven]
        number = cluster.nodes[via].ownership.core.epoch.number
        cluster.partition([owner], [second], rest)
        proposer = min(rest, key=lambda i: cluster.node_ids[i])
        with trio.fail_after(300):
            while not cluster.nodes[proposer].ownership.status()["ring_change_held"]:
                await trio.sleep(0.5)
        await trio.sleep(30)
        for i in rest:  # the second holder stays on the ring: the change waits
            assert cluster.nodes[i].ownership.core.epoch.number == number
            assert cluster.node_ids[second] in cluster.nodes[i].peers.placement.members
        assert cluster.nodes[proposer].ownership.status()["earlier_rings"] == 1
        await refused(cluster, via)
        for i in rest:
            assert not has_seq(cluster.nodes[i], conv, 1) or dedup_at(cluster.nodes[i], conv, 1) == dedup

        cluster.heal()
        async with cluster.client(via, "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "after", "c2")
            history = (await a.history("ben")).messages
        assert [m.body for m in history] == [b"before", b"after"], history
        # Repair back: a pass on every member settles the ring of seven, and the ring takes everyone again.
        monkeypatch.setattr(Replicator, "repair_pass", real_pass)
        await cluster.wait_converged(600)
        assert not cluster.nodes[proposer].ownership.status()["ring_change_held"]


async def test_after_an_operator_forgets_both_holders_the_key_is_served_again(autojump_clock, repair_off):
    """The first test's case, with an operator: both nodes that held the
    acknowledged message are gone for good, and catch-up waits for them (the
    key answers UNAVAILABLE). ``timpy cluster forget`` of both gives up what
    only they held (``Epoch.gone``): catch-up stops waiting for them and the
    conversation takes messages again."""
    async with open_cluster(7, seed=11) as cluster:
        await cluster.wait_converged(300)
        conv, owner, second, third, rest, via, dedup = await acknowledged_on_two(cluster)

        cluster.partition([owner], [second], rest)
        await wait_off_ring(cluster, rest, owner)
        await wait_off_ring(cluster, rest, second)
        await refused(cluster, via)

        proposer = min(rest, key=lambda i: cluster.node_ids[i])
        gone = {cluster.node_ids[owner], cluster.node_ids[second]}
        for name in sorted(gone):  # the operator, on any live member (voters change one at a time)
            cluster.nodes[proposer].ownership.forget(name)
            with trio.fail_after(300):
                while name in cluster.nodes[via].ownership.core.epoch.voters:
                    await trio.sleep(0.5)
        assert cluster.nodes[via].peers.placement.gone == gone
        async with cluster.client(via, "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "after the forget", "c2")
            history = (await a.history("ben")).messages
        assert [m.body for m in history][-1:] == [b"after the forget"]
