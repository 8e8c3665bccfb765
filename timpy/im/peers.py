"""What the messaging domain needs from the cluster: where a key lives, a
way to ask that node, and whether this node may act for a key now (its
ownership lease, ``timpy.cluster.ownership``). A standalone node is a cluster
of one, where every key is local and nothing goes over the network.

It runs the operations of the catalog (``timpy.cluster.catalog``): a feature
``serve``s each with a handler, and ``ask``s (a request to the key's owner),
``tell``s (a notification to the key's owner), ``call``s or ``notify``s (a
given node) with the operation and its argument dataclass. Owner routing,
the not-the-owner guard, retry on a ring change, catch-up, replication and
per-key serializing are done here, as the catalog declares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import trio

from timpy.cluster.catalog import KeyOwner, Op
from timpy.cluster.ownership import Epoch
from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.rpc import Call, NotOwner, Rpc
from timpy.errors import Code, TimpyError
from timpy.store.rows import Copies

A = TypeVar("A")
R = TypeVar("R")

RING_RETRIES = 3  # tries of an operation whose owner said it is not the owner any more
RING_RETRY_TIME = 3.0  # seconds, at most, spent on them
RING_WAIT = 0.3  # seconds to wait for this node's ring to move after the first refusal (then 2x, ...)
MOVES_FOLLOWED = 3  # times one ``ask`` follows its key to a new owner while waiting on the old one


class OwnerMoved(TimpyError):
    """While this node waited on a key's owner, its ring gave the key to
    another node: ``ask`` asks that one at once (the operations it sends to
    owners are idempotent, as after any unanswered request)."""

    code = Code.UNAVAILABLE


class Keeper(Protocol):
    """Catch-up and replication of a key (``timpy.im.replication.Replicator``)."""

    async def ensure(self, kind: str, key: bytes) -> None: ...

    async def to_replicas(self, key: bytes, fetch: Callable[[], Awaitable[Copies]]) -> None: ...


class _Ownership(Protocol):
    @property
    def epoch(self) -> Epoch: ...

    def has_lease(self) -> bool: ...

    def require_lease(self) -> None: ...

    async def wait_for_lease(self, timeout: float = ...) -> None: ...

    def cut_off(self) -> str | None: ...

    def applying(self, epoch_number: int) -> AbstractAsyncContextManager[None]: ...

    async def fence(self, epoch: Epoch) -> None: ...

    def note_repaired(self, epoch_number: int) -> None: ...

    def held_dead(self) -> frozenset[str]: ...


class Peers:
    def __init__(self, placement: Placement, rpc: Rpc | None, ownership: _Ownership | None = None) -> None:
        self.placement = placement
        self.rpc = rpc
        self.ownership = ownership
        self._served: dict[int, Callable[[Any], Any]] = {}  # catalog number -> how it runs here
        self._locks: dict[tuple[int, bytes], trio.Lock] = {}  # serialized operations at their owner

    def require_write(self) -> None:
        """Raise UNAVAILABLE (saying how many members this node reaches) unless
        a majority of the voting members confirms this node's lease. A
        standalone node is its own majority."""
        if self.ownership is not None:
            self.ownership.require_lease()

    async def await_write(self) -> None:
        """As ``require_write``, but while the ring is changing wait a few
        seconds for the lease rather than refuse."""
        if self.ownership is not None:
            await self.ownership.wait_for_lease()

    @property
    def epoch_number(self) -> int:
        return self.ownership.epoch.number if self.ownership is not None else 0

    @classmethod
    def standalone(cls, node_id: str) -> Peers:
        return cls(Placement(node_id, "", ReplicationConfig()), None)

    @property
    def self_id(self) -> str:
        return self.placement.self_id

    def owner(self, key: bytes) -> str:
        return self.placement.owner(key)

    def is_local(self, key: bytes) -> bool:
        return self.rpc is None or self.placement.is_local(key)

    def _rpc(self) -> Rpc:
        assert self.rpc is not None, "a standalone node has no peers"
        return self.rpc

    async def call(
        self, node_id: str, op: Op[A, R], args: A, timeout: float | None = None,
        moved: Callable[[], bool] | None = None,
    ) -> R:
        """Ask node ``node_id`` to run ``op`` with its argument dataclass
        (waiting its declared timeout unless told otherwise; run here, now,
        when that node is this one). ``moved``, asked while the answer is
        awaited: true ends the wait with ``OwnerMoved``."""
        if node_id == self.self_id or self.rpc is None:
            await self.await_write()
            return await self._run_here(op, args)
        if timeout is None:
            timeout = op.timeout
        await self.await_write()  # a node cut off from the majority refuses at once rather than wait on peers
        call = self._rpc().start_call(self.placement.address(node_id), op, args)
        # ... and stops waiting as soon as it is cut off while the call is out
        # (a split mid-request: the lease runs out within its bound).
        cut_off = self.ownership.cut_off if self.ownership is not None else None
        if moved is None:
            return await call.result(timeout, cut_off)

        def give_up() -> str | None:
            reason = cut_off() if cut_off is not None else None
            if reason is None and moved():
                raise OwnerMoved("the cluster gave this to another node while this one waited; retry")
            return reason

        return await call.result(timeout, give_up)

    def start_call(self, node_id: str, op: Op[A, R], args: A) -> Call:
        """Send ``op`` to another node now; ``.result(timeout)`` waits for its answer."""
        return self._rpc().start_call(self.placement.address(node_id), op, args)

    def notify(self, node_id: str, op: Op[A, None], args: A) -> None:
        """Best effort, no answer. To this node it runs here, now."""
        if node_id == self.self_id or self.rpc is None:
            result = self._served[op.number](args)
            if hasattr(result, "close"):  # a coroutine nobody would await: a handler to make sync
                result.close()
                raise TypeError(f"{op.name} is notified to this node: its handler must not wait")
            return
        if node_id in self.placement.addresses:
            self.rpc.notify(self.placement.address(node_id), op, args)

    def others(self) -> list[str]:
        return sorted(self.placement.members - {self.self_id})

    # --- the catalog's operations ----------------------------------------------

    def require_owner(self, key: bytes, what: str = "key") -> None:
        """The one guard of an operation served at a key's owner: ``NotOwner``
        (UNAVAILABLE, "retry") unless this node owns ``key`` now."""
        if not self.is_local(key):
            raise NotOwner.of(what)

    def serve(
        self, op: Op[A, R], here: Callable[[A], Any], keeper: Keeper | None = None,
        copies: Callable[[A, R], Callable[[], Awaitable[Copies]] | None] | None = None,
    ) -> None:
        """Serve ``op`` with ``here(args)`` (sync or async), here and to the
        other nodes. For an operation owned by a key, what the catalog
        declares happens around ``here`` at the owner, called from this node
        (``ask``) or another: one call per key at a time (``serialize``),
        catch-up before it (``catch_up``: ``keeper.ensure``), replication of
        ``copies(args, result)`` after it (``replicate``: ``keeper.to_replicas``;
        ``copies`` returns None when nothing was written). Another node's
        request is refused with ``NotOwner`` by a node that does not own the
        key (notifications are not: nobody would hear it)."""
        if (op.catch_up or op.replicate) and keeper is None:
            raise TypeError(f"{op.name} declares catch-up or replication: serve it with a keeper")
        if op.replicate != (copies is not None):
            raise TypeError(f"{op.name}: copies are given exactly when the operation replicates")
        owner = op.owner
        run: Callable[[A], Any] = here
        if isinstance(owner, KeyOwner) and (op.catch_up or op.replicate or op.serialize):
            run = self._at_owner(op, here, owner, keeper, copies)
        self._served[op.number] = run
        if self.rpc is None:
            return
        if isinstance(owner, KeyOwner) and op.reply:
            what = owner.what

            def guarded(args: A) -> Any:
                key = op.key(args)
                self.require_owner(key, what)
                if self.ownership is None or self.ownership.has_lease():
                    return run(args)
                return waited(key, args)

            async def waited(key: bytes, args: A) -> Any:
                # While the ring is changing (a majority answers, the lease is
                # on its way) wait for it as this node's own requests do,
                # rather than refuse and leave every caller to retry; a node
                # cut off from the majority still refuses at once.
                await self.await_write()
                self.require_owner(key, what)  # the ring may have moved meanwhile
                result = run(args)
                return await result if hasattr(result, "__await__") else result

            self.rpc.serve(op, guarded)
        else:
            self.rpc.serve(op, run)

    def _at_owner(
        self, op: Op[A, R], here: Callable[[A], Any], owner: KeyOwner, keeper: Keeper | None,
        copies: Callable[[A, R], Callable[[], Awaitable[Copies]] | None] | None,
    ) -> Callable[[A], Awaitable[R]]:
        space = owner.space

        async def steps(args: A, key: bytes) -> R:
            if op.catch_up:
                assert keeper is not None and space is not None
                await keeper.ensure(space, key)
            result = here(args)
            if hasattr(result, "__await__"):
                result = await result
            if copies is not None:
                fetch = copies(args, result)
                if fetch is not None:
                    assert keeper is not None
                    await keeper.to_replicas(key, fetch)
            return result

        async def run(args: A) -> R:
            key = op.key(args)
            if not op.serialize:
                return await steps(args, key)
            lock = self._locks.setdefault((op.number, key), trio.Lock())
            try:
                async with lock:
                    return await steps(args, key)
            finally:
                if not lock.locked() and not lock.statistics().tasks_waiting:
                    self._locks.pop((op.number, key), None)

        return run

    async def ask(self, op: Op[A, R], args: A, follow_moves: bool = False) -> R:
        """Run ``op`` at the owner of its key: here when that is this node,
        else at the owner. A refusal from a node that no longer owns the key
        is retried once this node's ring has moved, at most
        ``RING_RETRIES`` times within ``RING_RETRY_TIME`` seconds. With
        ``follow_moves`` (for an operation that is safe to send twice, as a
        send with its client id), a wait on an owner that does not answer
        ends as soon as this node's ring gives the key to another node, which
        is then asked (``MOVES_FOLLOWED`` times at most)."""
        key = op.key(args)
        give_up_at = trio.current_time() + RING_RETRY_TIME
        attempt = followed = 0
        while True:
            owner = self.owner(key)
            if owner == self.self_id or self.rpc is None:
                await self.await_write()
                return await self._run_here(op, args)
            version = self.placement.version
            try:
                # An owner that stops answering (dead, or across a split) is
                # waited on only until the ring gives the key to another node.
                moved = (lambda owner=owner: self.owner(key) != owner) if follow_moves else None
                return await self.call(owner, op, args, moved=moved)
            except OwnerMoved:
                followed += 1
                if followed > MOVES_FOLLOWED:
                    raise
            except NotOwner:
                attempt += 1
                left = give_up_at - trio.current_time()
                if attempt >= RING_RETRIES or left <= 0:
                    raise
                await self._ring_moves(version, min(left, RING_WAIT * attempt))

    async def _run_here(self, op: Op[A, R], args: A) -> R:
        result = self._served[op.number](args)
        return await result if hasattr(result, "__await__") else result

    async def _ring_moves(self, version: int, timeout: float) -> None:
        """Wait until this node's ring is not ``version`` any more, at most ``timeout``."""
        with trio.move_on_after(timeout):
            while self.placement.version == version:
                await trio.sleep(RING_WAIT / 4)

    def tell(self, op: Op[A, None], args: A) -> None:
        """Send notification ``op`` to the owner of its key (run here when that is this node)."""
        self.notify(self.owner(op.key(args)), op, args)

    def by_owner(self, keys: Any) -> dict[str, list[bytes]]:
        """Keys grouped by their owner node."""
        out: dict[str, list[bytes]] = {}
        for key in keys:
            out.setdefault(self.owner(key), []).append(key)
        return out
