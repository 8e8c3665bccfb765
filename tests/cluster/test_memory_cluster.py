"""The in-memory network and ``timpy.testing``'s clusters of full nodes, under a mock clock.

Every test here runs under ``trio.testing.MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock``): waits take virtual time, so a 30 s
partition passes at once. Nothing here opens a socket (checked).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import PASSWORD
from timpy.cluster.transport import MemoryNetwork
from timpy.errors import TimpyError
from timpy.testing import NodeDown, open_cluster, run


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a socket: a test cluster must not need one."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened inside a test cluster")

    monkeypatch.setattr(trio.socket, "socket", refuse)


async def _drain(transport, n: int) -> list[bytes]:  # noqa: ANN001
    return [await transport.incoming.receive() for _ in range(n)]


# --- the network ----------------------------------------------------------------


async def test_partitions_bridges_and_one_way_cuts(autojump_clock):
    net = MemoryNetwork()
    t = {name: net.transport(name) for name in "abcde"}

    def passes(src: str, dst: str) -> bool:
        before = t[dst].incoming.statistics().current_buffer_used
        t[src].send(dst, b"x")
        after = t[dst].incoming.statistics().current_buffer_used
        if after > before:
            t[dst].incoming.receive_nowait()
        return after > before

    assert all(passes(s, d) for s in "abcde" for d in "abcde" if s != d)
    net.partition({"a", "b"}, {"c", "d", "e"})
    assert passes("a", "b") and passes("d", "c") and passes("e", "d")
    assert not passes("a", "c") and not passes("e", "b")
    assert net.dropped["partition"] == 2

    net.partition({"a", "b", "c"}, {"c", "d", "e"})  # c is a bridge
    assert passes("c", "a") and passes("c", "e") and passes("a", "c") and passes("e", "c")
    assert not passes("a", "e") and not passes("d", "b")

    net.heal()
    net.cut("a", "b")
    assert not passes("a", "b") and passes("b", "a")
    net.down.add("e")
    assert not passes("e", "a") and not passes("a", "e")
    net.heal()
    assert all(passes(s, d) for s in "abcde" for d in "abcde" if s != d)

    net.partition({"a"}, {"b"})  # c, d and e are in no group: cut off from everyone
    assert not passes("c", "d") and not passes("a", "c")


async def test_loss_follows_the_seed():
    def lost(seed: int) -> list[int]:
        net = MemoryNetwork(loss=0.3, seed=seed)
        a, b = net.transport("a"), net.transport("b")
        got = []
        for i in range(200):
            a.send("b", i.to_bytes(2, "big"))
        while True:
            try:
                got.append(int.from_bytes(b.incoming.receive_nowait(), "big"))
            except trio.WouldBlock:
                break
        return sorted(set(range(200)) - set(got))

    first = lost(7)
    assert first == lost(7)
    assert 20 < len(first) < 100
    assert first != lost(8)


async def test_delayed_frames_take_virtual_time_and_keep_their_order_per_link(autojump_clock):
    net = MemoryNetwork(delay=0.5, jitter=2.0, seed=3)
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    async with trio.open_nursery() as nursery:
        for t in (a, b, c):
            await nursery.start(t.run)
        start = trio.current_time()
        for i in range(50):
            a.send("b", b"a%d" % i)
            c.send("b", b"c%d" % i)
        assert b.incoming.statistics().current_buffer_used == 0  # nothing arrives before its time
        got = await _drain(b, 100)
        assert trio.current_time() - start >= 0.5
        assert [x for x in got if x[:1] == b"a"] == [b"a%d" % i for i in range(50)]
        assert [x for x in got if x[:1] == b"c"] == [b"c%d" % i for i in range(50)]
        assert got != [x for pair in zip([b"a%d" % i for i in range(50)], [b"c%d" % i for i in range(50)],
                                          strict=True) for x in pair]  # the two links interleave by chance

        # a partition also stops what is already on its way
        a.send("b", b"late")
        net.partition({"a"}, {"b", "c"})
        await trio.sleep(5)
        assert b.incoming.statistics().current_buffer_used == 0
        assert net.dropped["partition"] == 1
        nursery.cancel_scope.cancel()


async def test_a_transport_that_stopped_is_off_the_network(autojump_clock):
    net = MemoryNetwork()
    a, b = net.transport("a"), net.transport("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        nursery.cancel_scope.cancel()
    a.send("b", b"to nobody")
    assert net.dropped["absent"] == 1 and a.stats.dropped == 1
    b2 = net.transport("b")  # a restart at the same address
    a.send("b", b"to the new one")
    assert b2.incoming.receive_nowait() == b"to the new one"
    b2.close()  # a crash: it neither sends nor receives from here on
    a.send("b", b"after the crash")
    b2.send("a", b"from the grave")
    assert net.dropped["absent"] == 2 and b2.stats.dropped == 1
    with pytest.raises(trio.WouldBlock):
        a.incoming.receive_nowait()


# --- clusters of full nodes -------------------------------------------------------


async def test_three_nodes_join_and_users_on_different_nodes_chat(autojump_clock):
    async with open_cluster(3) as cluster:
        nodes = cluster.nodes
        assert {len(n.peers.placement.members) for n in nodes} == {3}
        assert all(n.tcp_address is None and n.ws_address is None and n.admin_address is None for n in nodes)
        await cluster.register(0, "alice", PASSWORD)
        await cluster.register(1, "bob", PASSWORD)
        async with cluster.client(1, "alice", PASSWORD) as a, cluster.client(2, "bob", PASSWORD) as b:
            await b.wait_synced()
            for i in range(10):
                ack = await a.send("bob", f"m{i}")
                assert ack.seq == i + 1
            got = [await b.next_message(timeout=10) for _ in range(10)]
            assert [m.body for m in got] == [f"m{i}".encode() for i in range(10)]
            await b.send("alice", "back")
            assert (await a.next_message(timeout=10)).body == b"back"
        for i in range(3):  # history is the same through every node
            async with cluster.client(i, "bob", PASSWORD, device=f"d{i}") as b:
                page = await b.history("alice", limit=100)
                assert [m.seq for m in page.messages] == list(range(1, 12))


async def test_five_nodes_split_three_two_for_thirty_seconds_and_heal(autojump_clock):
    async with open_cluster(5) as cluster:
        ids = [n.node_id for n in cluster.nodes]
        for name in ("ann", "ben"):
            await cluster.register(0, name, PASSWORD)
        async with cluster.client(3, "ann", PASSWORD) as ann:
            for i in range(5):
                await ann.send("ben", f"before {i}")

        cluster.partition({0, 1, 2}, {3, 4})
        start = trio.current_time()
        await trio.sleep(30)
        assert trio.current_time() - start >= 30
        for i in (0, 1, 2):  # the majority declared the other two dead and moved their keys
            assert cluster.nodes[i].peers.placement.members == set(ids[:3])

        cluster.heal()
        await cluster.wait_converged()
        assert all(n.peers.placement.members == set(ids) for n in cluster.nodes)
        async with cluster.client(4, "ben", PASSWORD) as ben, cluster.client(1, "ann", PASSWORD) as ann:
            await ben.wait_synced()
            await ann.send("ben", "after")
            live = [await ben.next_message(timeout=10) for _ in range(6)]
            assert live[-1].body == b"after"
            page = await ben.history("ann", limit=100)
            assert [m.body for m in page.messages][:5] == [f"before {i}".encode() for i in range(5)]
            assert page.messages[-1].body == b"after"


async def test_a_killed_node_restarts_with_its_identity_and_sqlite_data(autojump_clock, tmp_path: Path):
    async with open_cluster(3, data_dir=tmp_path) as cluster:
        await cluster.register(0, "cat", PASSWORD)
        await cluster.register(0, "dan", PASSWORD)
        before = cluster.nodes[2].node_id
        async with cluster.client(2, "cat", PASSWORD) as cat:
            for i in range(5):
                await cat.send("dan", f"m{i}")
            await cluster.kill(2)
            with trio.fail_after(10):
                while cat.closed_reason is None:  # a kill ends the node's connections
                    await trio.sleep(0.1)
        with pytest.raises(NodeDown):
            await cluster.register(2, "eve", PASSWORD)

        await trio.sleep(20)  # long enough for the others to declare it dead
        assert all(len(cluster.nodes[i].peers.placement.members) == 2 for i in (0, 1))
        async with cluster.client(0, "cat", PASSWORD) as cat:
            for i in range(5, 8):  # while it is down
                await cat.send("dan", f"m{i}")

        node = await cluster.restart(2)
        assert node.node_id == before and (tmp_path / "node-2" / "timpy.sqlite3").exists()
        await cluster.wait_converged()

        def alive_everywhere() -> bool:
            return all(
                {m["name"]: m["state"] for m in cluster.nodes[i].cluster.status()}[before] == "alive" for i in (0, 1)
            )

        # Back alive in every view once it learns it was declared dead and refutes it with a new
        # incarnation (the ring may take it back a little before that: the others reach it first).
        with trio.fail_after(30):
            while not alive_everywhere():
                await trio.sleep(0.1)
        incarnations = {m["name"]: m["incarnation"] for m in cluster.nodes[0].cluster.status()}
        assert incarnations[before] >= 1
        async with cluster.client(2, "dan", PASSWORD) as dan:
            got = [await dan.next_message(timeout=10) for _ in range(8)]
            assert [m.body for m in got] == [f"m{i}".encode() for i in range(8)]
            page = await dan.history("cat", limit=100)
            assert [m.seq for m in page.messages] == list(range(1, 9))


async def test_a_memory_node_cannot_be_restarted(autojump_clock):
    async with open_cluster(1) as cluster:
        with pytest.raises(ValueError, match="data_dir"):
            await cluster.restart(0)


def test_a_scenario_repeats_exactly_with_the_same_seeds():
    """Same seeds, same run: acknowledgements, timings, drops and membership all
    repeat (within one process: str hashing is seeded per process)."""
    import trio._core._run as trio_run  # the scheduler's Random; hypothesis seeds it per example

    def scenario() -> list[object]:
        trace: list[object] = []

        async def main() -> None:
            net = MemoryNetwork(loss=0.05, delay=0.01, jitter=0.02, seed=5)
            async with open_cluster(4, network=net, seed=1) as cluster:
                for name in ("ann", "ben"):
                    for _ in range(3):  # as a user would, after an answer lost on the way
                        try:
                            await cluster.register(0, name, PASSWORD)
                            break
                        except TimpyError as exc:
                            trace.append((name, exc.code, trio.current_time()))
                async with cluster.client(1, "ann", PASSWORD) as ann:
                    for i in range(5):
                        # With 5% of frames lost a call between nodes can time out: the
                        # answer, whichever it is, must repeat with the same seeds.
                        try:
                            ack = await ann.send("ben", f"m{i}", client_id=f"c{i}")
                            trace.append((ack.seq, ack.conversation, ack.server_time, trio.current_time()))
                        except TimpyError as exc:
                            trace.append((exc.code, exc.text, trio.current_time()))
                cluster.partition({0, 1}, {2, 3})
                await trio.sleep(20)
                trace.append([sorted(n.peers.placement.members) for n in cluster.nodes])
                cluster.heal()
                await cluster.wait_converged()
                trace.append((trio.current_time(), dict(net.dropped), [n.cluster.status() for n in cluster.nodes]))

        trio_run._r.seed(1)
        run(main)
        return trace

    first = scenario()
    assert first == scenario()
    assert first[-1][1]["loss"] > 0 and first[-1][1]["partition"] > 0  # type: ignore[index]


async def test_a_skewed_node_stamps_messages_with_its_own_wall_clock(autojump_clock):
    async with open_cluster(3, seed=4) as cluster:
        for name in ("fay", "gus"):
            await cluster.register(0, name, PASSWORD)
        async with cluster.client(1, "fay", PASSWORD) as fay:  # a 1:1 message takes the time of the node it entered
            plain = await fay.send("gus", "on time")
            assert plain.server_time == cluster.wall_clock_ms(1)  # no virtual time passes in a send
            cluster.skew(1, 3600)
            assert cluster.wall_clock_ms(1) - cluster.wall_clock_ms(2) == 3600_000
            ahead = await fay.send("gus", "an hour ahead")
            assert ahead.server_time - plain.server_time == 3600_000


@settings(max_examples=8)
@given(
    sides=st.lists(st.integers(0, 2), min_size=4, max_size=4),  # 0: side A, 1: side B, 2: a bridge in both
    loss=st.sampled_from([0.0, 0.05]),
    seconds=st.integers(1, 40),
)
def test_after_any_split_and_heal_every_node_sees_every_node_again(sides, loss, seconds):
    async def scenario() -> None:
        async with open_cluster(4, network=MemoryNetwork(loss=loss)) as cluster:
            cluster.partition({i for i, s in enumerate(sides) if s in (0, 2)}, {i for i, s in enumerate(sides) if s >= 1})
            await trio.sleep(seconds)
            cluster.heal()
            await cluster.wait_converged()
            assert all(n.peers.placement.members == set(cluster.node_ids) for n in cluster.nodes)

    run(scenario)


async def test_a_restart_faster_than_any_suspicion_brings_the_same_node_back(autojump_clock, tmp_path: Path):
    async with open_cluster(3, data_dir=tmp_path) as cluster:
        await cluster.register(1, "hal", PASSWORD)
        old = cluster.nodes[1]
        uid = old.user_id_of("hal")
        with trio.fail_after(10):  # R = 3 on three nodes: node 1 gets a copy of the account
            while await old.store.run(old.store.repo.existing_accounts, [uid]) != {uid}:
                await trio.sleep(0.01)
        node = await cluster.restart(1)  # killed and started in the same instant
        assert node is not old and node.node_id == old.node_id and cluster.running(1)
        assert await node.store.run(node.store.repo.existing_accounts, [uid]) == {uid}  # from its file
        await cluster.wait_converged()
        async with cluster.client(1, "hal", PASSWORD) as hal:
            assert hal.user == "hal"


async def test_a_formed_cluster_starts_with_every_node_a_voter(autojump_clock, tmp_path: Path):
    """``formed=True``: the nodes start from kept members files, as a cluster
    that ran before, instead of joining one voter per epoch (five nodes would
    need epochs 1 to 5)."""
    with pytest.raises(ValueError, match="data_dir"):
        async with open_cluster(3, formed=True):
            pass  # pragma: no cover
    async with open_cluster(5, data_dir=tmp_path, formed=True) as cluster:
        for node in cluster.nodes:
            e = node.ownership.epoch
            assert e.voters == frozenset(cluster.node_ids) and e.members == e.voters
            assert e.number < 5, e.number  # not built one voter at a time
        await cluster.register(0, "ann", PASSWORD)
        await cluster.register(3, "ben", PASSWORD)
        async with cluster.client(4, "ann", PASSWORD) as ann:
            await ann.send("ben", "formed")
        async with cluster.client(1, "ben", PASSWORD) as ben:
            page = await ben.history("ann", limit=5)
        assert [m.body for m in page.messages] == [b"formed"]
