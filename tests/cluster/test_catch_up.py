"""Catch-up on takeover starts from the last slot the replicas agree on, not
from the new owner's head (docs/consistency.md, "Epochs on rows").

Five whole nodes over ``timpy.testing``'s memory network, under a mock clock.
The node that will own a conversation next holds, below its head, a row that
was never acknowledged (as an undo that missed it leaves one: another message
at an acknowledged seq, from an older epoch). Its owner is killed; the next
owner must take the acknowledged row from the previous replicas before it
numbers, answers a retry or serves history. Catching up by heads alone kept
the stale row (and a retry of the acknowledged message's client id was then
numbered again at a new seq)."""

from __future__ import annotations

import os

from sqlalchemy import select, update

from tests.conftest import PASSWORD
from tests.support.clients import send_until_acked
from timpy.im import ids
from timpy.store import digest
from timpy.store import schema as s
from timpy.testing import open_cluster


def row_at(node, conv: bytes, seq: int) -> tuple[bytes, int] | None:  # noqa: ANN001 - a timpy Node
    m = s.messages
    with node.store.repo.engine.connect() as conn:
        r = conn.execute(select(m.c.dedup, m.c.epoch).where(m.c.conv_id == conv, m.c.seq == seq)).first()
    return None if r is None else (bytes(r.dedup), int(r.epoch))


async def ann_and_ben(cluster) -> tuple[bytes, list[str]]:  # noqa: ANN001 - a timpy.testing Cluster
    """Register ann and ben; their 1:1 conversation's id and its replicas."""
    await cluster.register(0, "ann", PASSWORD)
    await cluster.register(0, "ben", PASSWORD)
    idx = cluster.nodes[0].indexer
    conv = ids.direct_conversation(idx, ids.user_id(idx, "ann"), ids.user_id(idx, "ben"))
    return conv, cluster.nodes[0].peers.placement.replicas(conv)


async def test_a_new_owner_replaces_a_never_acknowledged_row_below_its_head_before_it_numbers(autojump_clock):
    async with open_cluster(5, seed=4) as cluster:
        await cluster.register(0, "ann", PASSWORD)
        await cluster.register(0, "ben", PASSWORD)
        idx = cluster.nodes[0].indexer
        ann, ben = ids.user_id(idx, "ann"), ids.user_id(idx, "ben")
        conv = ids.direct_conversation(idx, ann, ben)
        replicas = cluster.nodes[0].peers.placement.replicas(conv)
        owner, successor = (cluster.node_ids.index(n) for n in replicas[:2])
        via = next(i for i in range(5) if i not in (owner, successor))
        async with cluster.client(via, "ann", PASSWORD) as a:
            for k in range(6):
                await send_until_acked(a, "ben", f"m{k}", f"c{k}")
        acked = row_at(cluster.nodes[owner], conv, 3)
        assert acked is not None and acked[1] > 0
        assert row_at(cluster.nodes[successor], conv, 3) == acked

        # Another message at seq 3, from an older epoch, whose slot hash is the
        # lower one (the rule before epochs, "the lowest hash stays", kept it).
        m = s.messages

        def created(node) -> int:  # noqa: ANN001
            with node.store.repo.engine.connect() as c:
                return int(c.execute(select(m.c.created_ms).where(m.c.conv_id == conv, m.c.seq == 3)).scalar())

        ms = await cluster.nodes[owner].store.run(created, cluster.nodes[owner])
        stale = next(
            d for d in iter(lambda: os.urandom(16), None)
            if digest.message_hash(d, ms, False)[:8] < digest.message_hash(acked[0], ms, False)[:8]
        )

        def plant(node) -> None:  # noqa: ANN001
            with node.store.repo.engine.begin() as c:
                c.execute(update(m).where(m.c.conv_id == conv, m.c.seq == 3).values(dedup=stale, epoch=0))

        await cluster.nodes[successor].store.run(plant, cluster.nodes[successor])
        await cluster.kill(owner)
        await cluster.wait_converged()
        assert cluster.nodes[via].peers.placement.owner(conv) == cluster.node_ids[successor]

        async with cluster.client(via, "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "m3 again", "c3")  # a retry of an acknowledged message
            await send_until_acked(a, "ben", "after", "c6")
            history = (await a.history("ben")).messages
        new_owner = cluster.nodes[successor]
        assert row_at(new_owner, conv, 3) == acked  # the acknowledged row is back, under its epoch
        assert [m.body for m in history] == [*(f"m{k}".encode() for k in range(6)), b"after"]
        assert [m.seq for m in history] == list(range(1, 8))  # the retry was not numbered again
        assert new_owner.replicator.progress.conflicting_slots >= 1
        for n in cluster.nodes:
            if n is not cluster.nodes[owner]:
                await n.replicator.repair_pass()
        for i, n in enumerate(cluster.nodes):
            if i != owner and row_at(n, conv, 3) is not None:
                assert row_at(n, conv, 3) == acked, f"node {i} holds another message at an acknowledged seq"


async def test_catch_up_does_not_wait_out_a_previous_replica_that_cannot_answer(autojump_clock):
    """A new owner needs R - W + 1 of the key's previous replicas (itself
    counting): once enough have answered, one that is dead or across a split
    gets a short grace, not the whole timeout of its request (which every
    write to the key used to wait out)."""
    import trio

    from timpy.im.replication import CATCH_UP_GRACE, CATCH_UP_TIMEOUT

    async with open_cluster(5, seed=4) as cluster:
        conv, replicas = await ann_and_ben(cluster)
        owner, successor = (cluster.node_ids.index(n) for n in replicas[:2])
        via = next(i for i in range(5) if i not in (owner, successor))
        async with cluster.client(via, "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "before", "c0")
        acked = row_at(cluster.nodes[owner], conv, 1)
        await cluster.kill(owner)
        await cluster.wait_converged()
        new = cluster.nodes[successor]
        assert new.peers.placement.owner(conv) == cluster.node_ids[successor]
        assert cluster.node_ids[owner] in {n for r in new.peers.placement.history_replicas(conv) for n in r}
        assert not new.replicator.is_warm("conv", conv)
        started = trio.current_time()
        await new.replicator.ensure("conv", conv)
        took = trio.current_time() - started  # virtual seconds (the mock clock): what the protocol waited
        assert took < CATCH_UP_TIMEOUT, f"catch-up waited {took:.2f} s for a dead replica"
        assert took >= CATCH_UP_GRACE, took  # the live ones were given their grace
        assert new.replicator.is_warm("conv", conv)
        assert row_at(new, conv, 1) == acked


async def test_catch_up_refuses_at_once_when_too_few_of_the_previous_replicas_are_alive(autojump_clock):
    """A 3/2 split that puts two of a key's three replicas on the minority:
    on the majority no answer can be enough once the membership holds those
    two dead, so catch-up refuses (UNAVAILABLE) without waiting out their
    timeouts, as the writer would for every batch that touches the key."""
    import pytest
    import trio

    from timpy.errors import TimpyError
    from timpy.im.replication import CATCH_UP_TIMEOUT

    async with open_cluster(5, seed=4) as cluster:
        conv, replicas = await ann_and_ben(cluster)
        minority = [cluster.node_ids.index(n) for n in replicas[:2]]
        majority = [i for i in range(5) if i not in minority]
        async with cluster.client(majority[0], "ann", PASSWORD) as a:
            await send_until_acked(a, "ben", "before", "c0")
        cluster.partition(majority, minority)
        live = cluster.nodes[majority[0]]
        gone = {cluster.node_ids[i] for i in minority}
        with trio.fail_after(120):
            while gone & live.peers.placement.members or not live.peers.ownership.has_lease():
                await trio.sleep(0.5)
        owner = next(cluster.nodes[i] for i in majority if cluster.nodes[i].peers.placement.is_local(conv))
        assert any(len(gone & set(r)) >= 2 for r in owner.peers.placement.history_replicas(conv))
        owner.replicator._warm.clear()
        started = trio.current_time()
        with pytest.raises(TimpyError) as refused:
            await owner.replicator.ensure("conv", conv)
        assert trio.current_time() - started < CATCH_UP_TIMEOUT / 4
        assert refused.value.code.name == "UNAVAILABLE" and "could reach only" in refused.value.text
        assert owner.replicator.refused_early >= 1


async def test_a_cluster_of_one_remembers_nothing_per_key_it_served(autojump_clock):
    """A default node is a ring of one that no other node ever shared: there
    is nothing to catch up from, so serving users and conversations leaves no
    per-key record behind (it used to keep one per key for as long as the
    ring stayed, a set that grew with every user and conversation served)."""
    async with open_cluster(1, seed=3) as cluster:
        node = cluster.nodes[0]
        assert node.peers.placement.alone
        for name in ("ann", "ben", "cat"):
            await cluster.register(0, name, PASSWORD)
        async with cluster.client(0, "ann", PASSWORD) as a:
            for k, to in enumerate(("ben", "cat", "ben")):
                await send_until_acked(a, to, f"m{k}", f"c{k}")
        idx = node.indexer
        conv = ids.direct_conversation(idx, ids.user_id(idx, "ann"), ids.user_id(idx, "ben"))
        assert node.replicator.is_warm("conv", conv)
        await node.replicator.ensure("conv", conv)
        assert not node.replicator._warm and not node.replicator._locks


async def test_the_write_quorum_is_decided_as_the_replicas_answer(autojump_clock):
    """``Replicator.replicate`` waits for each replica's answer, with no task
    of its own per replica: it returns once enough replicas stored the copy
    (one that never answers is not waited for), and fails with UNAVAILABLE as
    soon as every replica has answered without enough of them storing it,
    not after the quorum's timeout; each refusal is counted."""
    import pytest
    import trio

    from timpy.cluster import catalog as ops
    from timpy.errors import Code, TimpyError
    from timpy.im.replication import QUORUM_TIMEOUT
    from timpy.store.rows import Copies

    async with open_cluster(3, seed=2) as cluster:
        writer, b, c = cluster.nodes
        both = frozenset({b.node_id, c.node_id})
        copies = Copies(reads=[(b"user", b"conv", 1)])

        def refuse(_args):  # noqa: ANN001, ANN202
            raise TimpyError("this replica is not taking copies now", Code.UNAVAILABLE)

        async def never(_args):  # noqa: ANN001, ANN202
            await trio.sleep_forever()

        def stored(_args):  # noqa: ANN001, ANN202
            return 1

        b.cluster.rpc.serve(ops.COPIES_APPLY, refuse)
        c.cluster.rpc.serve(ops.COPIES_APPLY, refuse)
        failures = writer.replicator.progress.copy_failures
        started = trio.current_time()
        with pytest.raises(TimpyError) as refused:
            await writer.replicator.replicate({b.node_id: copies, c.node_id: copies}, [(both, 1)])
        assert refused.value.code == Code.UNAVAILABLE and "write quorum" in refused.value.text
        assert trio.current_time() - started < QUORUM_TIMEOUT / 10  # virtual seconds: not the timeout
        assert writer.replicator.progress.copy_failures == failures + 2

        c.cluster.rpc.serve(ops.COPIES_APPLY, stored)
        b.cluster.rpc.serve(ops.COPIES_APPLY, never)
        started = trio.current_time()
        await writer.replicator.replicate({b.node_id: copies, c.node_id: copies}, [(both, 1)])
        assert trio.current_time() - started < QUORUM_TIMEOUT / 10
        assert writer.replicator.progress.copy_failures == failures + 2

        c.cluster.rpc.serve(ops.COPIES_APPLY, never)  # nobody stores it: the quorum's timeout, then a failure
        started = trio.current_time()
        with pytest.raises(TimpyError):
            await writer.replicator.replicate({b.node_id: copies, c.node_id: copies}, [(both, 1)])
        assert trio.current_time() - started >= QUORUM_TIMEOUT
        assert writer.replicator.progress.copy_failures == failures + 4
