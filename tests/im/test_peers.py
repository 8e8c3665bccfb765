"""The catalog's framework (``timpy.im.peers.Peers``): owner routing, the one
not-the-owner refusal and its bounded retry, catch-up, replication and
per-key serializing as declared, malformed requests refused, and an
operation the catalog does not declare (a string name, an unknown number)
refused as unknown."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.conftest import FAST_SECURITY
from timpy.cluster import catalog as ops
from timpy.cluster import codec
from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.ring import HashRing
from timpy.cluster.rpc import NotOwner, Rpc, is_rpc
from timpy.cluster.transport import MemoryNetwork
from timpy.config import NodeConfig
from timpy.errors import Code, TimpyError
from timpy.im import peers as peers_module
from timpy.im.peers import Peers
from timpy.store.rows import Copies
from timpy.testing import open_cluster


@dataclasses.dataclass(frozen=True)
class Loose1:
    a: Any


@dataclasses.dataclass(frozen=True)
class Loose2:
    a: Any
    b: Any


async def _pump(transport, rpc: Rpc) -> None:  # noqa: ANN001
    async for payload in transport.incoming:
        raw = codec.unpack(payload)
        if is_rpc(raw):
            rpc.receive(raw)


@asynccontextmanager
async def two_nodes(a_ring: set[str], b_ring: set[str]) -> AsyncIterator[tuple[Peers, Peers]]:
    """Nodes a and b over the in-memory network, each placing keys on its own view of the ring."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        made = []
        for name, ring in (("a", a_ring), ("b", b_ring)):
            transport = network.transport(f"{name}:1")
            rpc = Rpc(transport)
            await nursery.start(transport.run)
            await nursery.start(rpc.run)
            nursery.start_soon(_pump, transport, rpc)
            placement = Placement(name, f"{name}:1", ReplicationConfig(1, 1))
            placement.addresses.update({"a": "a:1", "b": "b:1", "c": "c:1"})
            placement.set_members(ring)
            made.append(Peers(placement, rpc))
        yield made[0], made[1]
        nursery.cancel_scope.cancel()


def key_owned(owner_in: dict[frozenset[str], str]) -> bytes:
    """A key whose owner on each given ring is the given node."""
    for i in range(10_000):
        key = b"user-%d" % i
        if all(HashRing.of(ring, ReplicationConfig().vnodes).owner(key) == owner
               for ring, owner in owner_in.items()):
            return key
    raise AssertionError("no such key")


def roster_of(peers: Peers, name: str, asked: list[str]) -> None:
    def here(a: ops.RosterGet) -> dict[str, list[str]]:
        asked.append(name)
        return {"friends": [name]}

    peers.serve(ops.ROSTER_GET, here)


async def test_a_key_is_served_at_its_owner_whichever_node_asks():
    key = key_owned({frozenset({"a", "b"}): "b"})
    async with two_nodes({"a", "b"}, {"a", "b"}) as (a, b):
        asked: list[str] = []
        roster_of(a, "a", asked)
        roster_of(b, "b", asked)
        assert await a.ask(ops.ROSTER_GET, ops.RosterGet(key)) == {"friends": ["b"]}
        assert await b.ask(ops.ROSTER_GET, ops.RosterGet(key)) == {"friends": ["b"]}
        assert asked == ["b", "b"]


async def test_a_node_that_is_not_the_owner_refuses_and_the_caller_retries_once_its_ring_moves():
    # a places the key on b; b's ring (with c) places it on c: b refuses.
    key = key_owned({frozenset({"a", "b"}): "b", frozenset({"a", "b", "c"}): "c"})
    async with two_nodes({"a", "b"}, {"a", "b", "c"}) as (a, b):
        asked: list[str] = []
        roster_of(a, "a", asked)
        roster_of(b, "b", asked)

        async def ring_moves() -> None:
            await trio.sleep(0.05)
            a.placement.set_members({"a"})  # a learns that b and c are gone: the key is a's now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ring_moves)
            assert await a.ask(ops.ROSTER_GET, ops.RosterGet(key)) == {"friends": ["a"]}
        assert asked == ["a"]  # b refused without running anything


async def test_the_retry_is_bounded_and_ends_in_the_one_refusal():
    key = key_owned({frozenset({"a", "b"}): "b", frozenset({"a", "b", "c"}): "c"})
    async with two_nodes({"a", "b"}, {"a", "b", "c"}) as (a, b):
        asked: list[str] = []
        roster_of(b, "b", asked)
        refusals = 0
        real = b.require_owner

        def counting(k: bytes, what: str = "key") -> None:
            nonlocal refusals
            try:
                real(k, what)
            except NotOwner:
                refusals += 1
                raise

        b.require_owner = counting  # type: ignore[method-assign]
        started = trio.current_time()
        with pytest.raises(NotOwner) as caught:
            await a.ask(ops.ROSTER_GET, ops.RosterGet(key))
        assert caught.value.code == Code.UNAVAILABLE
        assert caught.value.text == "this node does not own that user (the cluster is changing); retry"
        assert refusals == peers_module.RING_RETRIES and asked == []
        assert trio.current_time() - started <= peers_module.RING_RETRY_TIME + 1.0


async def test_a_malformed_request_is_refused_in_plain_words_and_reaches_no_handler():
    async with two_nodes({"a", "b"}, {"a", "b"}) as (a, b):
        asked: list[str] = []
        roster_of(b, "b", asked)
        assert a.rpc is not None and b.rpc is not None
        for bad in (Loose2(b"k", 1), Loose1("not bytes"), Loose1(None)):  # roster.get takes one bytes field
            # The same number, sent with arguments of another shape (as a node of another version would).
            impostor = ops.Op(ops.ROSTER_GET.number, "roster.get", type(bad), None, ops.THIS_NODE)
            with pytest.raises(TimpyError) as caught:
                await a.rpc.start_call("b:1", impostor, bad).result(5)
            assert caught.value.code == Code.BAD_REQUEST
            assert "roster" not in caught.value.text and "cannot read" in caught.value.text
        assert asked == [] and b.rpc.bad_frames == 3


async def test_an_operation_the_catalog_does_not_declare_is_refused_as_unknown():
    async with two_nodes({"a", "b"}, {"a", "b"}) as (a, b):
        assert a.rpc is not None and b.rpc is not None
        asked: list[str] = []
        roster_of(b, "b", asked)
        for method in ("roster.get", "copies.apply", 99_999):  # old string names, a number from a newer version
            impostor = ops.Op(0, str(method), Loose1, None, ops.THIS_NODE)
            object.__setattr__(impostor, "number", method)
            with pytest.raises(TimpyError) as caught:
                await a.rpc.start_call("b:1", impostor, Loose1(b"k")).result(5)
            assert caught.value.code == Code.UNKNOWN_OPERATION
            assert "another version of timpy" in caught.value.text
        assert asked == []


async def test_a_call_to_this_node_runs_in_place_and_a_standalone_node_answers_itself():
    """A node asks itself without the network (the handler gets the caller's
    own arguments, not a decoded copy), and so does a standalone node."""
    async with two_nodes({"a", "b"}, {"a", "b"}) as (a, b):
        seen: list[ops.Echo] = []

        def echo(args: ops.Echo) -> bytes:
            seen.append(args)
            return args.body * 2

        a.serve(ops.ECHO, echo)
        b.serve(ops.ECHO, echo)
        mine, theirs = ops.Echo(b"a"), ops.Echo(b"b")
        assert await a.call("a", ops.ECHO, mine) == b"aa"
        assert await a.call("b", ops.ECHO, theirs) == b"bb"
        assert seen[0] is mine and seen[1] == theirs and seen[1] is not theirs
    solo = Peers.standalone("solo")
    solo.serve(ops.ECHO, echo)
    assert await solo.call("solo", ops.ECHO, ops.Echo(b"s")) == b"ss"


class Keeper:
    """Records the framework's catch-up and replication steps, in order."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    async def ensure(self, kind: str, key: bytes) -> None:
        self.steps.append(f"catch-up {kind}")
        await trio.sleep(0.01)

    async def to_replicas(self, key: bytes, fetch) -> None:  # noqa: ANN001
        copies = await fetch()
        self.steps.append(f"replicate {len(copies.reads)}")
        await trio.sleep(0.01)


async def test_catch_up_handler_and_replication_run_in_order_one_call_per_key_at_a_time():
    steps: list[str] = []
    peers = Peers.standalone("me")

    async def here(a: ops.ProfileChange) -> bool:
        steps.append(f"change {a.changes['n']}")
        await trio.sleep(0.01)
        return a.changes["n"] != "same"

    def copies(a: ops.ProfileChange, changed: bool):  # noqa: ANN202
        if not changed:
            return None

        async def fetch() -> Copies:
            return Copies(reads=[(a.user_id, b"c", 1)])

        return fetch

    peers.serve(ops.ACCT_PROFILE, here, Keeper(steps), copies)
    async with trio.open_nursery() as nursery:
        for n in ("1", "2", "same"):
            nursery.start_soon(peers.ask, ops.ACCT_PROFILE, ops.ProfileChange(b"u", {"n": n}))
            await trio.sleep(0)
    assert steps == [
        "catch-up user", "change 1", "replicate 1",
        "catch-up user", "change 2", "replicate 1",
        "catch-up user", "change same",  # nothing written: nothing copied
    ]
    assert not peers._locks  # the per-key lock goes with the last call


def test_serving_an_operation_against_its_declaration_fails():
    peers = Peers.standalone("me")
    with pytest.raises(TypeError, match="keeper"):
        peers.serve(ops.ACCT_GET, lambda a: None)
    with pytest.raises(TypeError, match="copies"):
        peers.serve(ops.ACCT_CREATE, lambda a: None, Keeper([]))


async def test_every_operation_of_the_catalog_is_served_by_the_nodes_of_a_cluster(autojump_clock):
    async with open_cluster(2, config=NodeConfig(security=FAST_SECURITY)) as cluster:
        for node in cluster.nodes:
            assert node.cluster is not None
            # backend.* are served in shared-backend mode only (tests/store/test_shared_node.py),
            # echo by `timpy bench paths`
            missing = [op.name for op in ops.OPS.values()
                       if not node.cluster.rpc.serves(op) and not op.name.startswith("backend.") and op is not ops.ECHO]
            assert missing == []


class _LeaseOnItsWay:
    """The owner's side of ``OwnershipService`` as ``Peers`` sees it: no
    lease until ``lease_at`` (trio time); meanwhile the ring is changing
    (a majority answers) unless ``cut_off``. The waiting rule is
    ``OwnershipService.wait_for_lease``'s: wait up to 3 s while the ring is
    changing, refuse at once when cut off."""

    def __init__(self, lease_at: float, cut_off: bool = False) -> None:
        self.lease_at, self._cut = lease_at, cut_off
        self.epoch = type("E", (), {"number": 1})()

    def has_lease(self) -> bool:
        return trio.current_time() >= self.lease_at

    def require_lease(self) -> None:
        if not self.has_lease():
            raise TimpyError("this node reaches 1 of 3 cluster members; writes need 2", Code.UNAVAILABLE)

    async def wait_for_lease(self, timeout: float = 3.0) -> None:
        with trio.move_on_after(timeout):
            while not self._cut and not self.has_lease():
                await trio.sleep(0.05)
        self.require_lease()

    def cut_off(self) -> str | None:
        return "cut off" if self._cut and not self.has_lease() else None


async def test_an_owner_whose_lease_is_on_its_way_serves_another_nodes_request_after_it_comes(autojump_clock):
    """During a ring change the owner waits for its lease (as for its own
    requests) instead of refusing another node's request at once; an owner
    cut off from the majority still refuses at once."""
    key = key_owned({frozenset({"a", "b"}): "b"})
    async with two_nodes({"a", "b"}, {"a", "b"}) as (a, b):
        asked: list[str] = []
        roster_of(b, "b", asked)
        b.ownership = _LeaseOnItsWay(lease_at=trio.current_time() + 1.0)  # type: ignore[assignment]
        started = trio.current_time()
        assert await a.ask(ops.ROSTER_GET, ops.RosterGet(key)) == {"friends": ["b"]}
        assert trio.current_time() - started >= 1.0 and asked == ["b"]
        b.ownership = _LeaseOnItsWay(lease_at=trio.current_time() + 10.0, cut_off=True)  # type: ignore[assignment]
        started = trio.current_time()
        with pytest.raises(TimpyError) as refused:
            await a.ask(ops.ROSTER_GET, ops.RosterGet(key))
        assert refused.value.code == Code.UNAVAILABLE and trio.current_time() - started < 0.5
        assert asked == ["b"]


async def test_a_send_waiting_on_an_owner_that_does_not_answer_follows_its_conversation_to_the_next_owner(
    autojump_clock,
):
    """A forwarded send whose owner stops answering (the request lost, the
    owner gone) is sent to the conversation's next owner as soon as this
    node's ring moves it, not after the request's whole timeout (safe: the
    client id makes a second copy of the send the same message)."""
    from tests.conftest import PASSWORD
    from timpy.im import ids

    async with open_cluster(5, seed=4) as cluster:
        await cluster.register(0, "ann", PASSWORD)
        await cluster.register(0, "ben", PASSWORD)
        idx = cluster.nodes[0].indexer
        conv = ids.direct_conversation(idx, ids.user_id(idx, "ann"), ids.user_id(idx, "ben"))
        owner = cluster.node_ids.index(cluster.nodes[0].peers.placement.owner(conv))
        via = next(i for i in range(5) if i != owner)
        async with cluster.client(via, "ann", PASSWORD) as a:
            assert (await a.send("ben", "before", client_id="c0")).seq == 1
            cluster.cut(via, owner)  # the next forwarded send is lost on its way
            started = trio.current_time()

            async def owner_leaves() -> None:
                await trio.sleep(0.5)
                await cluster.stop(owner)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner_leaves)
                ack = await a.send("ben", "during", client_id="c1")
            took = trio.current_time() - started  # virtual seconds (the mock clock)
            assert cluster.nodes[via].peers.placement.owner(conv) != cluster.node_ids[owner]
            assert took < ops.CONV_APPEND.timeout, f"the send waited {took:.1f} s on an owner that had left"
            assert ack.seq == 2
            again = await a.send("ben", "during", client_id="c1")  # the retry of the same send: the same message
            assert (again.seq, again.duplicate) == (2, True)
            assert [m.body for m in (await a.history("ben")).messages] == [b"before", b"during"]
