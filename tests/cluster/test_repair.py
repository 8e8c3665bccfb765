"""Repair by content digests (issue 15): three real nodes in one trio
program; one replica's rows are deleted in the middle and slots changed under
it; one repair pass makes the three copies equal again. Attachments too
(issue 18): missing chunks come back, a missed deletion arrives."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import pytest
import trio
from sqlalchemy import delete, func, select, update

import timpy
from tests.conftest import PASSWORD, node_config
from tests.support.node_clusters import FAST_CLUSTER, cluster, wait_for_ring
from timpy.config import ClusterConfig, FilesConfig
from timpy.crypto.keys import ClusterKeys
from timpy.im import ids
from timpy.store import schema as s


def dump(node: timpy.Node) -> dict[str, object]:
    """Everything repair must make equal, as plain values (sealed bytes
    differ between replicas of one message: each seals with its own nonce)."""
    m, i, a, c, cm, rm = s.messages, s.inbox, s.accounts, s.conversations, s.conv_members, s.read_marks
    with node.store.repo.engine.connect() as conn:
        return {
            "messages": sorted(
                (bytes(r.conv_id), r.seq, bytes(r.dedup), r.created_ms, bool(r.gone))
                for r in conn.execute(select(m.c.conv_id, m.c.seq, m.c.dedup, m.c.created_ms,
                                             (func.length(m.c.content) == 0).label("gone")))
            ),
            "inbox": sorted((bytes(r.user_id), r.pos, bytes(r.conv_id), r.seq) for r in conn.execute(select(i))),
            "accounts": sorted((bytes(r.user_id), r.version) for r in conn.execute(select(a.c.user_id, a.c.version))),
            "conversations": sorted(bytes(r.conv_id) for r in conn.execute(select(c.c.conv_id))),
            "members": sorted((bytes(r.conv_id), bytes(r.user_id)) for r in conn.execute(select(cm))),
            "reads": sorted((bytes(r.user_id), bytes(r.conv_id), r.seq) for r in conn.execute(select(rm))),
        }


async def settle(nodes: list[timpy.Node]) -> None:
    """Wait until the passes the ring changes started are over and the copies are equal."""
    with trio.fail_after(30):
        while True:
            if all(n.replicator.progress.passes >= 1 and not n.replicator.progress.running for n in nodes):
                dumps = [await n.store.run(dump, n) for n in nodes]
                if all(x == dumps[0] for x in dumps):
                    return
            await trio.sleep(0.1)


@pytest.mark.parametrize("runner", ["damaged", "other"])
async def test_one_repair_pass_restores_equal_copies_after_holes_and_swapped_slots(runner: str) -> None:
    async with cluster(3, replicas=3, write_quorum=2, anti_entropy_interval=3600.0) as (nodes, _, _):
        for name in ("ann", "bob", "cat"):
            await timpy.register(nodes[0].tcp_url, name, PASSWORD)
        async with timpy.connect(nodes[1].tcp_url, "ann", PASSWORD) as ann:
            for k in range(30):
                await ann.send("bob", f"m{k}")
            await ann.send("cat", "hello cat")
        idx = nodes[0].indexer
        a, b, cat = (ids.user_id(idx, n) for n in ("ann", "bob", "cat"))
        conv = ids.direct_conversation(idx, a, b)
        await settle(nodes)
        before = await nodes[0].store.run(dump, nodes[0])
        damaged = nodes[2]

        def damage() -> None:
            m, i = s.messages, s.inbox
            with damaged.store.repo.engine.begin() as c:
                # holes below the head
                c.execute(delete(m).where(m.c.conv_id == conv).where(m.c.seq.between(5, 9)))
                c.execute(delete(i).where(i.c.user_id == b).where(i.c.pos.between(3, 6)))
                # one inbox slot swapped with the next: two slots hold other values here
                c.execute(update(i).where(i.c.user_id == b, i.c.pos == 20).values(pos=-20))
                c.execute(update(i).where(i.c.user_id == b, i.c.pos == 21).values(pos=20))
                c.execute(update(i).where(i.c.user_id == b, i.c.pos == -20).values(pos=21))
                # one message slot holding another message than on the other replicas
                c.execute(update(m).where(m.c.conv_id == conv, m.c.seq == 15).values(dedup=os.urandom(16)))
                # a message burned here only (its acting row not copied yet): not a conflict
                c.execute(update(m).where(m.c.conv_id == conv, m.c.seq == 25).values(content=b""))
                # a key gone entirely from this replica
                c.execute(delete(i).where(i.c.user_id == cat))
                c.execute(delete(s.accounts).where(s.accounts.c.user_id == cat))

        await damaged.store.run(damage)
        assert await damaged.store.run(dump, damaged) != before
        node = damaged if runner == "damaged" else nodes[0]
        p = node.replicator.progress
        conflicts = p.conflicting_slots + sum(n.replicator.progress.conflicting_slots for n in nodes if n is not node)
        await node.replicator.repair_pass()
        # An inbox entry that lost its slot was appended again by the owner's
        # writer, acknowledged by the write quorum (W=2): wait for the third copy.
        with trio.fail_after(10):
            while len({repr(await n.store.run(dump, n)) for n in nodes}) > 1:
                await trio.sleep(0.05)
        dumps = [await n.store.run(dump, n) for n in nodes]
        assert dumps[0] == dumps[1] == dumps[2]
        # Everything that was not in conflict is as it was; the holes are filled.
        after = dumps[0]
        assert [r for r in after["messages"] if r[0] == conv and r[1] not in (15, 25)] == [
            r for r in before["messages"] if r[0] == conv and r[1] not in (15, 25)
        ]
        burned = next(r for r in after["messages"] if r[0] == conv and r[1] == 25)
        assert burned[4]  # deleted stays deleted, on every replica
        # Every message is still in bob's inbox, even one whose slot went to another.
        assert {r[2:] for r in after["inbox"] if r[0] == b} == {r[2:] for r in before["inbox"] if r[0] == b}
        assert (cat, 1) in [(r[0], r[1]) for r in after["inbox"]]
        assert p.rows_repaired > 0 and p.ranges_compared > 0
        conflicts_now = sum(n.replicator.progress.conflicting_slots for n in nodes)
        assert conflicts_now - conflicts >= 2  # the message slot and the swapped inbox slots
        status = node.cluster_status()["repair"]
        assert status["conflicting_slots"] == p.conflicting_slots and status["rows_repaired"] == p.rows_repaired
        metrics = node.metrics.render().decode()
        assert f'timpy_repair_total{{what="rows_repaired"}} {float(p.rows_repaired)}' in metrics
        assert 'timpy_repair_total{what="conflicting_slots"}' in metrics
        # A second pass finds nothing left to do.
        rows = p.rows_repaired
        await node.replicator.repair_pass()
        assert p.rows_repaired == rows and p.keys_repaired == 0


def file_rows(node: timpy.Node, att: bytes) -> tuple[object, ...]:
    """What a node holds of one attachment: its row's state, chunk indexes, readers."""
    a, c, r = s.attachments, s.attachment_chunks, s.attachment_readers
    with node.store.repo.engine.connect() as conn:
        row = conn.execute(select(a.c.complete, a.c.deleted).where(a.c.att_id == att)).first()
        chunks = sorted(i for i in conn.execute(select(c.c.idx).where(c.c.att_id == att)).scalars())
        readers = sorted(bytes(u) for u in conn.execute(select(r.c.user_id).where(r.c.att_id == att)).scalars())
    return (None if row is None else tuple(row)), chunks, readers


async def test_repair_carries_an_attachment_s_missing_chunks_and_its_deletion() -> None:
    """Attachments are keys of the registry: a replica that lost chunks (or
    the whole file) gets them back from one repair pass, and a deletion it
    missed reaches it the same way instead of the file coming back."""
    keys = ClusterKeys.generate()
    async with AsyncExitStack() as stack:
        nodes: list[timpy.Node] = []
        for _ in range(3):
            join = (nodes[0].peer_address,) if nodes else ()
            cfg = node_config(
                cluster=ClusterConfig(join=join, **{**FAST_CLUSTER, "replicas": 3, "write_quorum": 2,
                                                    "anti_entropy_interval": 3600.0}),
                files=FilesConfig(chunk_size=1024),
            )
            nodes.append(await stack.enter_async_context(timpy.open_node(cfg, keys=keys)))
        await wait_for_ring(nodes)
        for name in ("ann", "bob"):
            await timpy.register(nodes[0].tcp_url, name, PASSWORD)
        data = os.urandom(10 * 1024 + 5)
        async with timpy.connect(nodes[0].tcp_url, "ann", PASSWORD) as ann:
            kept = await ann.upload(data, name="kept.bin")
            gone = await ann.upload(b"to be deleted" * 100, name="gone.bin")
            await ann.send_file(kept, to="bob")
        kept_id, gone_id = bytes.fromhex(kept.id), bytes.fromhex(gone.id)
        # Every copy of the write quorum's third replica is in: wait for it.
        with trio.fail_after(10):
            while len({repr(await n.store.run(file_rows, n, kept_id)) for n in nodes}) > 1:
                await trio.sleep(0.05)
        whole = await nodes[0].store.run(file_rows, nodes[0], kept_id)
        assert whole[0] == (True, False) and whole[1] == list(range(11)) and len(whole[2]) == 2
        damaged, other = nodes[2], nodes[1]

        def damage() -> None:
            c = s.attachment_chunks
            with damaged.store.repo.engine.begin() as conn:
                conn.execute(delete(c).where(c.c.att_id == kept_id, c.c.idx.in_([0, 4, 10])))
            # ``gone`` is deleted on the other two while this replica is away
            other.store.repo.delete_attachment(gone_id)
            nodes[0].store.repo.delete_attachment(gone_id)

        await damaged.store.run(damage)
        assert (await damaged.store.run(file_rows, damaged, kept_id))[1] == [1, 2, 3, 5, 6, 7, 8, 9]
        assert (await damaged.store.run(file_rows, damaged, gone_id))[0] == (True, False)
        await nodes[0].replicator.repair_pass()
        for n in nodes:
            assert await n.store.run(file_rows, n, kept_id) == whole
            assert await n.store.run(file_rows, n, gone_id) == ((False, True), [], [])
        async with timpy.connect(damaged.tcp_url, "bob", PASSWORD) as bob:
            assert await bob.download(kept.id) == data
        # A second pass finds nothing left to do.
        p = nodes[0].replicator.progress
        rows = p.rows_repaired
        await nodes[0].replicator.repair_pass()
        assert p.rows_repaired == rows and p.keys_repaired == 0
