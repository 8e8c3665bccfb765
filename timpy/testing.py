"""In-process clusters of full timpy nodes for tests, without sockets (like ``trio.testing``).

``open_cluster(n)`` starts ``n`` real nodes (accounts, messaging, groups,
replication: the whole im and store stack) that talk over a ``MemoryNetwork``
instead of TCP, and serves clients through the real gateway session code over
in-memory streams::

    async with open_cluster(3) as cluster:
        await cluster.register(0, "alice", "correct-horse")
        await cluster.register(1, "bob", "correct-horse")
        async with cluster.client(2, "alice", "correct-horse") as alice:
            await alice.send("bob", "hello")
        cluster.partition({0, 1}, {2})   # node indices; a node in two groups sees both sides
        await trio.sleep(30)             # virtual seconds under MockClock
        cluster.heal()
        await cluster.kill(2)            # abrupt: no graceful leave, no flush
        await cluster.restart(2)         # same identity and data (needs data_dir)

The ``Cluster`` it yields, nodes named by index:

- nodes: ``nodes`` (the latest ``Node`` of each index), ``node_ids`` (fixed by
  ``seed`` before any node starts), ``running(i)``, ``start(i)``, ``stop(i)``
  (graceful), ``kill(i)`` (abrupt), ``restart(i)``, ``wait_converged()``,
  ``config_of(i)``;
- network: ``network`` (the ``MemoryNetwork``: ``loss``, ``delay``, ``jitter``,
  ``dropped``), ``partition(*groups)``, ``cut(i, j)``, ``heal()``;
- clients: ``client(i, user, password, ...)`` (``timpy.connect``'s options), ``register(i,
  user, password)``, ``connector(i)`` (for ``timpy.connect`` in place of a URL);
- clocks: ``wall_clock_ms(i)``, ``skew(i, seconds)``.

``run(async_fn, *args)`` is ``trio.run`` under a fresh mock clock, for sync
hypothesis tests (one trio run per example).

Nothing in a cluster opens a socket: the client, WebSocket and admin
listeners are off in every node's config and the peer transport is in
memory. So the cluster runs under ``trio.testing.MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock`` fixture), where a 30 s partition takes a
fraction of a second. Storage and password hashing run in the trio thread
inside a cluster (``timpy.concurrency.inline_workers``): a worker thread would
let the mock clock jump while it works.

Runs repeat: ``seed`` fixes the cluster key (so user and conversation ids),
the node identities (so the ring and every owner), membership's random
choices and, unless you pass your own network, the network's loss and
jitter; each node's wall clock is trio's clock counted from 2026-01-01, plus
its skew. Trio's scheduler must be deterministic too (pytest-trio makes it so
under hypothesis); ``str`` hashing is seeded per process.

Storage is in memory by default; with ``data_dir`` each node keeps a SQLite
file in ``data_dir/node-<i>``, so ``kill`` and ``restart`` bring back the same
node with its data, as a process restart does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import nacl.signing
import trio
import trio.testing

from timpy.client import Client, Connector, connect, register
from timpy.cluster.ownership import Epoch
from timpy.cluster.ownership_service import save_members
from timpy.cluster.transport.memory import MemoryNetwork, MemoryTransport
from timpy.concurrency import inline_workers, unwrap_single_error
from timpy.config import NodeConfig, SecurityConfig
from timpy.crypto.keys import ClusterKeys
from timpy.gateway.listeners import serve_tcp_stream
from timpy.node.identity import node_id_of
from timpy.node.node import Node

__all__ = ["Cluster", "MemoryNetwork", "NodeDown", "open_cluster", "run"]

T = TypeVar("T")

#: argon2id at its minimum cost, the default for clusters built without a config: tests check behaviour.
FAST_SECURITY = SecurityConfig(password_opslimit=1, password_memlimit=8192)


WALL_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: where the nodes' wall clocks start
STOP_WITHIN = 60.0  # seconds the nodes get to stop gracefully when the cluster block ends


def _derive(seed: int, what: str) -> bytes:
    return hashlib.blake2b(f"timpy.testing {seed} {what}".encode(), digest_size=32).digest()


class NodeDown(ConnectionRefusedError):
    """A client tried to reach a node of the cluster that is not running."""


@dataclasses.dataclass(eq=False)
class _Running:
    node: Node
    transport: MemoryTransport
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    stopping: trio.Event = dataclasses.field(default_factory=trio.Event)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    sessions: trio.Nursery | None = None


class Cluster:
    """What ``open_cluster`` yields. Nodes are named by index, 0 to n-1."""

    def __init__(
        self, n: int, config: NodeConfig, network: MemoryNetwork, data_dir: Path | None, seed: int,
        nursery: trio.Nursery,
    ) -> None:
        self.network = network
        self.seed = seed
        self.keys = ClusterKeys(_derive(seed, "cluster key"))
        self.data_dir = data_dir
        self.addresses = [f"node-{i}:7072" for i in range(n)]  # each node's address on the network
        self._identities = [nacl.signing.SigningKey(_derive(seed, f"node {i}")) for i in range(n)]
        self.node_ids = [node_id_of(k) for k in self._identities]  # fixed by the seed, before any node starts
        self.nodes: list[Node] = []  # the latest Node object of each index (a new one after a restart)
        self._clock_offsets = [0.0] * n  # seconds each node's wall clock is ahead (``skew``)
        self._starts = [0] * n  # how often each node was started: seeds its membership rng
        self._config = config
        self._nursery = nursery
        self._runs: list[_Running | None] = [None] * n
        self._epoch = WALL_EPOCH - trio.current_time()

    # --- nodes ----------------------------------------------------------------

    def running(self, i: int) -> bool:
        return self._runs[i] is not None

    def config_of(self, i: int) -> NodeConfig:
        """Node ``i``'s config: no client, WebSocket or admin listener, storage in
        memory or in ``data_dir/node-<i>``, and the running nodes as seeds."""
        c = self._config
        join = tuple(a for j, a in enumerate(self.addresses) if j != i and self.running(j))
        return c.replace(
            memory=self.data_dir is None,
            data_dir=self.data_dir / f"node-{i}" if self.data_dir is not None else c.data_dir,
            listen=None,
            ws=None,
            ready_file=None,
            admin=dataclasses.replace(c.admin, listen=None),
            cluster=dataclasses.replace(c.cluster, listen=None, join=join),
        )

    async def start(self, i: int) -> Node:
        """Start node ``i`` (again) and return it once it serves; it joins the running nodes."""
        if self.running(i):
            raise RuntimeError(f"node {i} is running already")
        config = self.config_of(i)
        self._starts[i] += 1
        transport = self.network.transport(self.addresses[i])
        node = Node(
            config, self.keys, transport, identity=self._identities[i],
            rng=random.Random(f"{self.seed} {i} {self._starts[i]}"), clock_ms=partial(self.wall_clock_ms, i),
        )
        run: _Running = await self._nursery.start(self._run, node, transport)
        if node.tcp_address or node.ws_address or node.admin_address:  # pragma: no cover - config_of turns them off
            raise RuntimeError(f"node {i} opened a listener; a test cluster must not use sockets")
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
            self.nodes.append(node)
        self._runs[i] = run
        return node

    async def _run(self, node: Node, transport: MemoryTransport, task_status: trio.TaskStatus[_Running]) -> None:
        run = _Running(node, transport)
        try:
            with run.scope:
                async with trio.open_nursery() as nursery:
                    await node._start(nursery)
                    async with trio.open_nursery() as sessions:
                        run.sessions = sessions
                        task_status.started(run)
                        await run.stopping.wait()
                        sessions.cancel_scope.cancel()  # client connections close first, as the gateway's do
                    await node._stop()
        finally:
            if not node._stopped and hasattr(node, "store"):
                node.store.close()  # killed: what a process's death releases
            if node.data_lock is not None:
                node.data_lock.release()  # as the OS drops a dead process's flock
            run.done.set()

    async def kill(self, i: int) -> None:
        """Stop node ``i`` abruptly, as SIGKILL would: no graceful leave, nothing
        flushed; its clients see their connection end. What it stored stays."""
        run = self._take(i)
        run.transport.close()  # what its tasks send while they are cancelled goes nowhere
        run.scope.cancel()
        await run.done.wait()

    async def stop(self, i: int) -> None:
        """Stop node ``i`` gracefully: clients closed, queued writes stored, a leave announced."""
        run = self._take(i)
        run.stopping.set()
        await run.done.wait()

    async def restart(self, i: int) -> Node:
        """Kill node ``i`` if it runs, and start it again with the same identity and
        data (a new incarnation). Needs ``data_dir``: in memory nothing survives."""
        if self.data_dir is None:
            raise ValueError(
                "restart needs the nodes' data to survive: open the cluster with data_dir=... "
                "(a node in memory comes back empty, with a new identity)"
            )
        if self.running(i):
            await self.kill(i)
        return await self.start(i)

    def _take(self, i: int) -> _Running:
        run = self._runs[i]
        if run is None:
            raise RuntimeError(f"node {i} is not running")
        self._runs[i] = None
        return run

    async def wait_converged(self, timeout: float = 120.0) -> None:
        """Wait until every running node has every running node, and only those, on
        its ring (a ring epoch a majority accepted), and holds its ownership lease."""
        with trio.fail_after(timeout):
            while True:
                up = [r.node for r in self._runs if r is not None]
                ids = {n.node_id for n in up}
                if all(n.peers.placement.members == ids and n.ownership.has_lease() for n in up):
                    return
                await trio.sleep(0.05)

    def wall_clock_ms(self, i: int) -> int:
        """Node ``i``'s wall clock (ms since the epoch): trio's clock, from a fixed date, plus its offset."""
        return int((self._epoch + trio.current_time() + self._clock_offsets[i]) * 1000)

    def skew(self, i: int, seconds: float) -> None:
        """Set node ``i``'s wall clock ``seconds`` ahead of the others (behind if negative)."""
        self._clock_offsets[i] = seconds

    # --- the network, by node index -----------------------------------------------

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the network between groups of node indices; a node in two groups is a
        bridge that sees both sides, a node in none reaches nobody (``MemoryNetwork.partition``)."""
        self.network.partition(*({self.addresses[i] for i in g} for g in groups))

    def cut(self, source: int, destination: int) -> None:
        """Lose every frame from node ``source`` to node ``destination`` (one way)."""
        self.network.cut(self.addresses[source], self.addresses[destination])

    def heal(self) -> None:
        """End partitions and cuts (``MemoryNetwork.heal``)."""
        self.network.heal()

    # --- clients ------------------------------------------------------------------

    def connector(self, i: int) -> Connector:
        """Opens in-memory connections to node ``i``'s gateway: pass it to
        ``timpy.connect`` or ``timpy.register`` in place of a URL."""

        async def open_stream() -> trio.abc.Stream:
            run = self._runs[i]
            if run is None or run.sessions is None:
                raise NodeDown(f"node {i} is not running")
            client_end, server_end = trio.testing.memory_stream_pair()
            run.sessions.start_soon(serve_tcp_stream, run.node, server_end)
            return client_end

        return open_stream

    @asynccontextmanager
    async def client(
        self,
        i: int,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        device: str | None = None,
        create: bool = False,
        sync: bool = True,
        resume_after: int = 0,
        device_kind: str = "",
    ) -> AsyncIterator[Client]:
        """``timpy.connect`` to node ``i`` (same options): the normal client, through the real gateway session."""
        async with connect(
            self.connector(i), user, password, token=token, device=device, create=create, sync=sync,
            resume_after=resume_after, device_kind=device_kind,
        ) as c:
            yield c

    async def register(self, i: int, user: str, password: str) -> None:
        """Create an account through node ``i``."""
        await register(self.connector(i), user, password)


@asynccontextmanager
async def open_cluster(
    n: int,
    *,
    config: NodeConfig | None = None,
    data_dir: Path | None = None,
    network: MemoryNetwork | None = None,
    seed: int = 0,
    converge: bool = True,
    formed: bool = False,
) -> AsyncIterator[Cluster]:
    """Run ``n`` nodes over an in-memory network for the duration of the block.

    ``config`` is the base of every node's config (default: ``NodeConfig`` with
    the cheapest password hashing and SQLite's ``synchronous = NORMAL``);
    listeners, storage place and seeds are set per node (``Cluster.config_of``).
    ``data_dir``: SQLite files there instead of memory. ``network``: one of
    your own (lossy, slow; default a lossless one seeded with ``seed``).
    ``seed`` fixes the cluster key, the node identities (so the ring and every
    key's owner), and membership's random choices. With ``converge`` the block
    starts once every node has all n on its ring. ``formed`` (needs
    ``data_dir``): the nodes start as a cluster that ran before, every one a
    voter (each data directory holds the members file a node keeps), instead
    of joining one voter at a time, a lease apart (about 2 s a node: minutes of
    protocol traffic for 50 nodes). Leaving the block stops the running nodes
    gracefully.
    """
    if n < 1:
        raise ValueError(f"a cluster needs at least one node, got {n}")
    if formed and data_dir is None:
        raise ValueError("formed=True starts the nodes from their kept members files: give a data_dir")
    # NORMAL: a commit survives the process (all a kill here is), without an fsync each time.
    base = config or NodeConfig(security=FAST_SECURITY, sqlite_synchronous="NORMAL")
    if base.database_url or base.storage.shared:
        raise ValueError("open_cluster keeps each node's data apart: leave database_url and [storage] backends unset")
    with unwrap_single_error(), inline_workers():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(n, base, network or MemoryNetwork(seed=seed), data_dir, seed, nursery)
            if formed:
                assert data_dir is not None
                everyone = frozenset(cluster.node_ids)
                addresses = dict(zip(cluster.node_ids, cluster.addresses, strict=True))
                for i in range(n):
                    (data_dir / f"node-{i}").mkdir(parents=True, exist_ok=True)
                    (data_dir / f"node-{i}").chmod(0o700)
                    save_members(data_dir / f"node-{i}", Epoch(1, everyone, everyone), addresses)
            try:
                for i in range(n):
                    await cluster.start(i)
                if converge:
                    await cluster.wait_converged()
                yield cluster
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + STOP_WITHIN
                    for i in range(n):
                        if cluster.running(i):
                            await cluster.stop(i)
                nursery.cancel_scope.cancel()  # whatever did not stop in time


def run(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(async_fn, *args)`` under a fresh ``MockClock(autojump_threshold=0)``.

    For hypothesis tests: a sync ``@given`` test calls this once per example,
    so each example gets its own trio run and clock (a clock fixture would be
    shared between examples)."""
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
