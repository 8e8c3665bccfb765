"""Several real nodes in one trio program, over real TCP peer channels:
routing to owners, replication, catch-up after ownership moves, anti-entropy."""

from __future__ import annotations

import math

import pytest
import trio

import timpy
from tests.conftest import PASSWORD
from tests.support.node_clusters import cluster, cluster_config, wait_for_ring
from timpy.cluster import catalog as ops
from timpy.im import ids


def owner_of(nodes: list[timpy.Node], key: bytes) -> timpy.Node:
    owner_id = nodes[0].peers.placement.owner(key)
    return next(n for n in nodes if n.node_id == owner_id)


async def test_users_on_different_nodes_chat_with_offline_delivery_and_history():
    async with cluster(3) as (nodes, _, _):
        await timpy.register(nodes[0].tcp_url, "alice", PASSWORD)
        await timpy.register(nodes[1].tcp_url, "bob", PASSWORD)
        with pytest.raises(timpy.RemoteError) as e:  # the name is taken cluster-wide
            await timpy.register(nodes[2].tcp_url, "bob", PASSWORD)
        assert e.value.code == timpy.Code.USER_EXISTS
        async with timpy.connect(nodes[1].tcp_url, "alice", PASSWORD) as a:
            async with timpy.connect(nodes[2].tcp_url, "bob", PASSWORD) as b:
                await b.wait_synced()
                for i in range(20):
                    ack = await a.send("bob", f"m{i}")
                    assert ack.seq == i + 1
                got = [await b.next_message(timeout=10) for _ in range(20)]
                assert [m.body for m in got] == [f"m{i}".encode() for i in range(20)]
                await b.send("alice", "back")
                assert (await a.next_message(timeout=10)).body == b"back"
            for i in range(20, 30):  # bob is offline now
                await a.send("bob", f"m{i}")
        async with timpy.connect(nodes[0].tcp_url, "bob", PASSWORD) as b:
            await b.wait_synced()
            got = [await b.next_message(timeout=10) for _ in range(10)]
            assert [m.body for m in got] == [f"m{i}".encode() for i in range(20, 30)]
            page = await b.history("alice", limit=100)
            assert [m.seq for m in page.messages] == list(range(1, 32))


async def test_every_message_reaches_its_replicas():
    async with cluster(3) as (nodes, _, _):
        await timpy.register(nodes[0].tcp_url, "carol", PASSWORD)
        await timpy.register(nodes[0].tcp_url, "dave", PASSWORD)
        async with timpy.connect(nodes[2].tcp_url, "carol", PASSWORD) as c:
            for i in range(10):
                await c.send("dave", f"x{i}")
        carol = ids.user_id(nodes[0].indexer, "carol")
        dave = ids.user_id(nodes[0].indexer, "dave")
        conv = ids.direct_conversation(nodes[0].indexer, carol, dave)
        # R = 3 on three nodes: each holds the conversation and both accounts.
        with trio.fail_after(10):
            while True:
                heads = [await n.store.run(n.store.repo.conversation_head, conv) for n in nodes]
                inboxes = [await n.store.run(n.store.repo.inbox_head, dave) for n in nodes]
                if heads == [10] * 3 and inboxes == [10] * 3:
                    break
                await trio.sleep(0.05)


async def test_the_next_owner_continues_the_sequence_with_no_gap_or_reuse():
    async with cluster(4) as (nodes, keys, stack):
        await timpy.register(nodes[0].tcp_url, "erin", PASSWORD)
        await timpy.register(nodes[0].tcp_url, "frank", PASSWORD)
        erin = ids.user_id(nodes[0].indexer, "erin")
        frank = ids.user_id(nodes[0].indexer, "frank")
        conv = ids.direct_conversation(nodes[0].indexer, erin, frank)
        owner = owner_of(nodes, conv)
        gateway = next(n for n in nodes if n is not owner and n.node_id != nodes[0].peers.placement.owner(erin))
        async with timpy.connect(gateway.tcp_url, "erin", PASSWORD) as e:
            for i in range(15):
                await e.send("frank", f"before {i}")
            # The owner leaves: its keys move to the next node clockwise.
            rest = [n for n in nodes if n is not owner]
            await owner._stop()
            await wait_for_ring(rest)
            new_owner = owner_of(rest, conv)
            assert new_owner is not owner
            for i in range(15):
                ack = await e.send("frank", f"after {i}")
                assert ack.seq == 16 + i
            page = await e.history("frank", limit=100)
        assert [m.seq for m in page.messages] == list(range(1, 31))
        assert [m.body for m in page.messages] == [f"before {i}".encode() for i in range(15)] + [
            f"after {i}".encode() for i in range(15)
        ]


async def test_a_node_that_joins_receives_its_ranges_by_anti_entropy():
    async with cluster(2, replicas=3, write_quorum=2) as (nodes, keys, stack):
        for name in ("gina", "hank"):
            await timpy.register(nodes[0].tcp_url, name, PASSWORD)
        async with timpy.connect(nodes[1].tcp_url, "gina", PASSWORD) as g:
            for i in range(25):
                await g.send("hank", f"early {i}")
        late = await stack.enter_async_context(
            timpy.open_node(cluster_config((nodes[0].peer_address,), replicas=3, write_quorum=2), keys=keys)
        )
        await wait_for_ring([*nodes, late])
        gina = ids.user_id(late.indexer, "gina")
        hank = ids.user_id(late.indexer, "hank")
        conv = ids.direct_conversation(late.indexer, gina, hank)
        with trio.fail_after(20):  # three nodes, three replicas: the newcomer holds everything
            while (
                await late.store.run(late.store.repo.conversation_head, conv) != 25
                or await late.store.run(late.store.repo.inbox_head, hank) != 25
            ):
                await trio.sleep(0.1)
        assert sum(n.replicator.progress.keys_repaired for n in nodes) >= 1
        status = late.cluster_status()
        assert {m["name"] for m in status["members"]} == {n.node_id for n in [*nodes, late]}
        assert abs(sum(m["share"] for m in status["members"]) - 1.0) < 0.01


async def test_history_is_read_from_another_replica_when_the_owner_does_not_answer():
    async with cluster(3) as (nodes, _, _):
        await timpy.register(nodes[0].tcp_url, "ivy", PASSWORD)
        await timpy.register(nodes[0].tcp_url, "jon", PASSWORD)
        ivy = ids.user_id(nodes[0].indexer, "ivy")
        jon = ids.user_id(nodes[0].indexer, "jon")
        owner = owner_of(nodes, ids.direct_conversation(nodes[0].indexer, ivy, jon))
        gateway = next(n for n in nodes if n is not owner)
        async with timpy.connect(gateway.tcp_url, "ivy", PASSWORD) as i:
            for k in range(5):
                await i.send("jon", f"h{k}")

            async def hang(*args):  # noqa: ANN002, ANN202 - the owner stops answering reads
                await trio.sleep_forever()

            owner.cluster.rpc.serve(ops.CONV_HISTORY, lambda _args: hang())
            with trio.fail_after(20):
                page = await i.history("jon")
        assert [m.body for m in page.messages] == [f"h{k}".encode() for k in range(5)]


async def test_a_new_owner_missing_the_latest_rows_catches_up_before_numbering():
    """The next owner lost its copies of the newest messages (as if their
    replication had not reached it); it must pull them from the third replica
    before it numbers the next send, or it would reuse sequence numbers."""
    from sqlalchemy import delete, update

    from timpy.store import schema as s

    async with cluster(3) as (nodes, _, _):
        for name in ("kim", "lee"):
            await timpy.register(nodes[0].tcp_url, name, PASSWORD)
        kim = ids.user_id(nodes[0].indexer, "kim")
        lee = ids.user_id(nodes[0].indexer, "lee")
        conv = ids.direct_conversation(nodes[0].indexer, kim, lee)
        replicas = nodes[0].peers.placement.replicas(conv)
        owner, heir = (next(n for n in nodes if n.node_id == r) for r in replicas[:2])
        gateway = next(n for n in nodes if n is not owner)
        async with timpy.connect(gateway.tcp_url, "kim", PASSWORD, sync=False) as k:
            for i in range(10):
                await k.send("lee", f"m{i}")
            with trio.fail_after(10):
                while await heir.store.run(heir.store.repo.conversation_head, conv) != 10:
                    await trio.sleep(0.05)

            def forget() -> None:
                with heir.store.repo.engine.begin() as c:
                    c.execute(delete(s.messages).where(s.messages.c.conv_id == conv).where(s.messages.c.seq > 6))
                    c.execute(update(s.conversations).where(s.conversations.c.conv_id == conv).values(last_seq=6))

            await heir.store.run(forget)
            await owner._stop()
            await wait_for_ring([n for n in nodes if n is not owner])
            assert owner_of([n for n in nodes if n is not owner], conv) is heir
            ack = await k.send("lee", "m10")
            assert ack.seq == 11
            page = await k.history("lee", limit=50)
        assert [m.body for m in page.messages] == [f"m{i}".encode() for i in range(11)]


def _forget_rows(node: timpy.Node, conv: bytes, seqs: range):
    """This replica lacks these rows of ``conv``, as if their copies or
    the repair that brings them had not reached it yet."""
    from sqlalchemy import delete

    from timpy.store import schema as s

    def forget() -> None:
        with node.store.repo.engine.begin() as c:
            c.execute(delete(s.messages).where(s.messages.c.conv_id == conv).where(s.messages.c.seq.in_(list(seqs))))

    return node.store.run(forget)


async def _wait_heads(nodes: list[timpy.Node], conv: bytes, recipient: bytes, head: int) -> None:
    """Until every node holds ``head`` messages of ``conv`` and of the
    recipient's inbox (whose copies carry the message rows too: none is on
    its way any more), and the repair passes the ring's changes started
    have ended (so rows a test removes are not put back at once; if one
    still runs, it only makes the copy whole again and the test easier)."""
    with trio.fail_after(30):
        while True:
            heads = [await n.store.run(n.store.repo.conversation_head, conv) for n in nodes]
            inboxes = [await n.store.run(n.store.repo.inbox_head, recipient) for n in nodes]
            if heads == inboxes == [head] * len(nodes):
                break
            await trio.sleep(0.05)
        passes = None
        while True:  # a triggered pass starts 1 s after its trigger
            now = [(n.replicator.progress.passes, n.replicator.progress.running) for n in nodes]
            if now == passes and not any(running for _, running in now):
                break
            passes = now
            await trio.sleep(1.5)


async def _sent_ten(nodes: list[timpy.Node], sender: str, recipient: str) -> tuple[bytes, bytes, timpy.Node]:
    """Register two users; ``sender`` sends m0..m9 to ``recipient`` through a
    node other than their conversation's owner, and every replica holds them.
    Returns (conversation id, recipient's id, the owner)."""
    for name in (sender, recipient):
        await timpy.register(nodes[0].tcp_url, name, PASSWORD)
    idx = nodes[0].indexer
    rid = ids.user_id(idx, recipient)
    conv = ids.direct_conversation(idx, ids.user_id(idx, sender), rid)
    owner = owner_of(nodes, conv)
    gateway = next(n for n in nodes if n is not owner)
    async with timpy.connect(gateway.tcp_url, sender, PASSWORD, sync=False) as c:
        for i in range(10):
            await c.send(recipient, f"m{i}")
    await _wait_heads(nodes, conv, rid, 10)
    return conv, rid, owner


def _refuse(node: timpy.Node, op: ops.Op, times: float):
    """``node`` answers ``op`` with the refusal of a node whose lease is
    renewing under a new ring, ``times`` times, then as before."""
    from timpy.cluster.ownership_service import QuorumLost

    original = node.cluster.rpc.handler(op)
    refused = [0]

    def refusing(args):  # noqa: ANN001, ANN202
        if refused[0] < times:
            refused[0] += 1
            raise QuorumLost("the cluster is moving to a new ring (epoch 9) after a node joined, left or "
                             "failed; writes resume within a few seconds: retry")
        return original(args)

    node.cluster.rpc.serve(op, refusing)
    return refused


async def test_a_history_read_waits_for_an_owner_whose_ring_is_changing():
    """The owner refuses for a moment while its lease renews under a new
    ring: the read asks it again rather than show a replica's copy that
    lacks the newest acknowledged messages (W = 2 of R = 3: one replica may
    not have them yet)."""
    async with cluster(3, anti_entropy_interval=600.0) as (nodes, _, _):
        conv, _, owner = await _sent_ten(nodes, "mia", "ned")
        others = [n for n in nodes if n is not owner]
        async with timpy.connect(others[0].tcp_url, "mia", PASSWORD, sync=False) as m:
            for n in others:
                await _forget_rows(n, conv, range(9, 11))
            refused = _refuse(owner, ops.CONV_HISTORY, 2)
            page = await m.history("ned", limit=50)
        assert [msg.body for msg in page.messages] == [f"m{i}".encode() for i in range(10)]
        assert refused[0] == 2


async def test_a_replica_copy_with_a_hole_is_not_shown_as_history():
    """The owner cannot serve the read: a replica's copy may stand in, but
    only where it has no hole (here the first replica asked lacks older
    messages that the other has); a replica may lack only the newest."""
    async with cluster(3, anti_entropy_interval=600.0) as (nodes, _, _):
        conv, _, owner = await _sent_ten(nodes, "oli", "pam")
        gateway = next(n for n in nodes if n is not owner)
        async with timpy.connect(gateway.tcp_url, "oli", PASSWORD, sync=False) as o:
            first = next(n for n in nodes if n.node_id == gateway.peers.placement.replicas(conv)[1])
            await _forget_rows(first, conv, range(2, 6))
            _refuse(owner, ops.CONV_HISTORY, math.inf)
            with trio.fail_after(20):
                page = await o.history("pam", limit=50)
            assert [msg.body for msg in page.messages] == [f"m{i}".encode() for i in range(10)]
            # Paging back from the newest: the page that would skip the hole is refused too.
            page = await o.history("pam", limit=3, before=6)
            assert [msg.seq for msg in page.messages] == [3, 4, 5]


async def test_with_the_owner_silent_history_shows_every_acknowledged_message_from_the_other_replicas():
    """W = 2 of R = 3: a message acknowledged by the owner and one replica
    may not have reached the third yet. With the owner silent, the read
    takes the copy that reaches furthest, not the first replica's."""
    async with cluster(3, anti_entropy_interval=600.0) as (nodes, _, _):
        conv, _, owner = await _sent_ten(nodes, "sal", "tom")
        gateway = next(n for n in nodes if n is not owner)
        async with timpy.connect(gateway.tcp_url, "sal", PASSWORD, sync=False) as c:
            first = next(n for n in nodes if n.node_id == gateway.peers.placement.replicas(conv)[1])
            await _forget_rows(first, conv, range(8, 11))

            async def hang(*args):  # noqa: ANN002, ANN202 - the owner stops answering reads
                await trio.sleep_forever()

            owner.cluster.rpc.serve(ops.CONV_HISTORY, lambda _args: hang())
            with trio.fail_after(20):
                page = await c.history("tom", limit=50)
        assert [m.body for m in page.messages] == [f"m{i}".encode() for i in range(10)]


async def test_a_live_terminal_stays_connected_while_its_owner_refuses_a_resync_for_a_moment():
    """After a ring change each live terminal is synced from where it is;
    the user's owner may refuse for a moment (its lease renewing under the
    new ring): the sync is tried again, the connection stays open."""
    async with cluster(3) as (nodes, _, _):
        for name in ("qin", "rob"):
            await timpy.register(nodes[0].tcp_url, name, PASSWORD)
        rob = ids.user_id(nodes[0].indexer, "rob")
        owner = owner_of(nodes, rob)
        gateway = next(n for n in nodes if n is not owner)
        async with timpy.connect(gateway.tcp_url, "rob", PASSWORD) as r:
            await r.wait_synced()
            refused = _refuse(owner, ops.INBOX_READ, 2)
            gateway.deliverer.reattach_terminals()  # as after a ring change
            with trio.fail_after(10):
                while refused[0] < 2:
                    await trio.sleep(0.05)
            async with timpy.connect(owner.tcp_url, "qin", PASSWORD, sync=False) as q:
                await q.send("rob", "still there?")
            assert (await r.next_message(timeout=10)).body == b"still there?"


async def test_with_the_owner_silent_each_slot_shows_its_higher_stamp_and_too_few_copies_refuse():
    """A replica may hold, at a slot, a row of a write that was undone there
    too late (a lower stamp) where the acknowledged message now is: with the
    owner silent, the read merges the other replicas' rows slot by slot, the
    higher stamp winning. With a second replica silent too, what is left
    cannot be sure to hold every acknowledged message (W = 2 of R = 3), and
    the read is refused instead of shown."""
    from timpy.crypto.seal import message_ad
    from timpy.errors import Code, TimpyError

    async with cluster(3, anti_entropy_interval=600.0) as (nodes, _, _):
        conv, _, owner = await _sent_ten(nodes, "uma", "vic")
        gateway = next(n for n in nodes if n is not owner)
        first = next(n for n in nodes if n.node_id == gateway.peers.placement.replicas(conv)[1])

        def undone_row_at_ten() -> None:  # m8's content at seq 10, one stamp below the row there
            repo = first.store.repo
            with repo.engine.begin() as c:
                content, stamp = c.exec_driver_sql(
                    "SELECT content, epoch FROM messages WHERE conv_id = ? AND seq = ?", (conv, 9)).first()
                top = c.exec_driver_sql("SELECT epoch FROM messages WHERE conv_id = ? AND seq = ?", (conv, 10)).first()
                opened = repo.open_sealed_message(conv, 9, bytes(content))
                c.exec_driver_sql("UPDATE messages SET content = ?, epoch = ? WHERE conv_id = ? AND seq = ?",
                                  (repo._sealer.seal(opened, message_ad(conv, 10)), int(top[0]) - 1, conv, 10))

        await first.store.run(undone_row_at_ten)
        async with timpy.connect(gateway.tcp_url, "uma", PASSWORD, sync=False) as u:
            async def hang(*args):  # noqa: ANN002, ANN202 - stops answering reads
                await trio.sleep_forever()

            owner.cluster.rpc.serve(ops.CONV_HISTORY, lambda _args: hang())
            with trio.fail_after(20):
                page = await u.history("vic", limit=50)
            assert [m.body for m in page.messages] == [f"m{i}".encode() for i in range(10)]
            # The reader's node reads its own copy without asking: silence the other one.
            other = next(n for n in nodes if n is not owner and n is not gateway)
            other.cluster.rpc.serve(ops.CONV_HISTORY_STAMPED, lambda _args: hang())
            with trio.fail_after(40), pytest.raises(TimpyError) as refused:
                await u.history("vic", limit=50)
            assert refused.value.code == Code.UNAVAILABLE
