"""Shared-backend mode at the node: the backend map every node routes by,
spread between nodes, and the moves that change it.

* **Start.** The map stored in the backends (the newest of those the node's
  ``[storage]`` list reaches) wins; on the cluster's first start, the list
  becomes map version 1.
* **Spread.** A new map version is stored in every backend, then sent to
  every live node (``backend.map``), which routes by it and answers once no
  write routed by an older map is still running in it. Every few seconds
  each node also asks a random peer for its map (``backend.get``) and takes
  it if newer, so a node that missed a change catches up.
* **Moves.** ``backend.add``/``backend.remove``/``backend.resume`` (from
  ``timpy backend``) start or resume a move, driven by this node
  (``timpy.store.rebalance``). If the driving node dies, the first live node
  in id order resumes it.
"""

from __future__ import annotations

import logging
import random

import trio

from timpy.cluster import catalog as ops
from timpy.errors import Code, ConfigError, RequestError, StorageError, TimpyError
from timpy.im.peers import Peers
from timpy.store.backends import BackendMap, BackendSpec
from timpy.store.rebalance import Rebalancer
from timpy.store.repository import Repository, Store
from timpy.store.sharded import ShardedRepository

log = logging.getLogger("timpy.backends")

APPLY_TIMEOUT = 30.0  # seconds a node may take to route by a new map
GOSSIP_INTERVAL = 3.0


class BackendCoordinator:
    def __init__(self, store: Store, peers: Peers, node_id: str, configured: tuple[BackendSpec, ...]) -> None:
        assert isinstance(store.repo, ShardedRepository)
        self._store = store
        self.repo: ShardedRepository = store.repo
        self._peers = peers
        self._node_id = node_id
        self._configured = configured
        self.rebalancer = Rebalancer(store, node_id, self.publish)
        self._driving = False
        self._nursery: trio.Nursery | None = None
        self._publish_lock = trio.Lock()
        peers.serve(ops.BACKEND_MAP, self._on_map)
        peers.serve(ops.BACKEND_GET, lambda _: self.repo.map.pack())
        peers.serve(ops.BACKEND_STATUS, lambda _: self.status())
        peers.serve(ops.BACKEND_ADD, lambda a: self.add(a.name, a.url, a.weight))
        peers.serve(ops.BACKEND_REMOVE, lambda a: self.remove(a.name))
        peers.serve(ops.BACKEND_RESUME, lambda _: self.resume())

    # --- start ------------------------------------------------------------------

    async def load(self) -> None:
        """Take the newest stored map, or store the configured list as version 1."""
        await self._store.run(self.repo.create_schema)
        stored = await self._store.run(self.repo.load_map)
        if stored is None:
            await self._store.run(self.repo.store_map, self.repo.map)
            log.info("backend map version 1 created from the configuration: %s", self._names(self.repo.map))
            return
        await trio.to_thread.run_sync(self.repo.set_map, stored, True)
        await self._store.run(self.repo.create_schema)
        extra = {b.name for b in self._configured} - set(stored.all_specs())
        if extra:
            log.warning(
                "[storage] lists %s, which the cluster's backend map (version %d) does not: the map wins; "
                "add a backend with `timpy backend add`", ", ".join(sorted(extra)), stored.version,
            )
        log.info("backend map version %d: %s", stored.version, self._names(stored))

    @staticmethod
    def _names(m: BackendMap) -> str:
        text = ", ".join(f"{b.name} (weight {b.weight:g})" for b in m.backends)
        return text + (f"; move in phase {m.move.phase}" if m.move else "")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self.repo.map.move is not None and (self._peers.rpc is None or self.repo.map.move.driver == self._node_id):
                self._start_driver()
            while True:
                await trio.sleep(GOSSIP_INTERVAL)
                await self._gossip_once()

    async def _gossip_once(self) -> None:
        others = self._peers.others() if self._peers.rpc is not None else []
        if others:
            peer = random.choice(others)
            try:
                raw = await self._peers.call(peer, ops.BACKEND_GET, ops.NoArgs())
                await self._apply(BackendMap.unpack(raw))
            except (TimpyError, ValueError) as exc:
                log.debug("backend map from %s: %s", peer, exc)
        move = self.repo.map.move
        alive = sorted(self._peers.placement.members | {self._node_id})
        if move is not None and not self._driving and move.driver not in alive and alive[0] == self._node_id:
            log.warning("the node driving the backend move (%s) is gone: resuming it here", move.driver)
            self._start_driver()

    # --- spreading the map ------------------------------------------------------

    async def _apply(self, m: BackendMap) -> int:
        """Route by ``m`` if it is newer; return once no older write is running here."""
        if m.version > self.repo.map.version:
            opened = await trio.to_thread.run_sync(self.repo.set_map, m)
            if opened:
                log.info("backend map version %d: opened %s", m.version, ", ".join(opened))
            else:
                log.info("backend map version %d%s", m.version, f" (move: {m.move.phase})" if m.move else "")
        with trio.move_on_after(APPLY_TIMEOUT):
            while not self.repo.drained(m.version):
                await trio.sleep(0.01)
            return self.repo.map.version
        raise TimpyError(f"writes routed by an older backend map are still running after {APPLY_TIMEOUT:g} s",
                         Code.UNAVAILABLE)

    async def _on_map(self, a: ops.BackendMapArgs) -> int:
        return await self._apply(BackendMap.unpack(a.map))

    async def publish(self, m: BackendMap) -> None:
        """Store ``m`` in the backends, route by it here, and wait until every live node does."""
        async with self._publish_lock:
            await self._store.run(self.repo.store_map, m)
            await self._apply(m)
            if self._peers.rpc is None:
                return
            for attempt in range(3):
                pending = list(self._peers.others())
                failed: list[str] = []

                async def tell(node: str, failed: list[str] = failed) -> None:
                    try:
                        await self._peers.call(node, ops.BACKEND_MAP, ops.BackendMapArgs(m.pack()),
                                               timeout=APPLY_TIMEOUT + 5)
                    except TimpyError as exc:
                        log.warning("node %s did not take backend map version %d: %s", node, m.version, exc.text)
                        failed.append(node)

                async with trio.open_nursery() as nursery:
                    for node in pending:
                        nursery.start_soon(tell, node)
                still = [n for n in failed if n in self._peers.placement.members]
                if not still:
                    return
                await trio.sleep(1.0 + attempt)
            raise StorageError(
                f"nodes {', '.join(still)} did not take backend map version {m.version}; "
                "the move is paused where it is: `timpy backend resume` continues it"
            )

    # --- moves -------------------------------------------------------------------

    def _start_driver(self) -> None:
        assert self._nursery is not None
        if self._driving:
            return
        self._driving = True

        async def drive() -> None:
            try:
                await self.rebalancer.run()
            except TimpyError as exc:
                log.error("backend move stopped: %s", exc.text)
            finally:
                self._driving = False

        self._nursery.start_soon(drive)

    async def add(self, name: str, url: str, weight: float = 1.0) -> dict[str, object]:
        current = self.repo.map
        if current.move is not None:
            raise RequestError("a backend move is in progress; wait for it or `timpy backend resume`", Code.BAD_REQUEST)
        try:
            spec = BackendSpec(str(name), str(url), float(weight))
        except ConfigError as exc:
            raise RequestError(exc.text, Code.BAD_REQUEST) from None
        for b in current.backends:
            if b.name == spec.name:
                raise RequestError(f"there is a backend named {spec.name} already", Code.BAD_REQUEST)
            if b.url == spec.url:
                raise RequestError(f"backend {b.name} has that URL already", Code.BAD_REQUEST)
        await self._check_new_backend(spec)
        await self.publish(current.start_move((*current.backends, spec), self._node_id))
        self._start_driver()
        return self.status()

    async def _check_new_backend(self, spec: BackendSpec) -> None:
        """The new backend answers, takes the schema, and holds no timpy data yet."""
        def check() -> tuple[int, int]:
            engine = self.repo._engine_for(spec)
            try:
                repo = Repository(engine, self.repo._sealer, self.repo._effect_of)
                repo.create_schema()
                return repo.key_count()
            finally:
                engine.dispose()

        try:
            convs, users = await trio.to_thread.run_sync(check)
        except TimpyError as exc:
            raise RequestError(f"backend {spec.name}: {exc.text}", Code.BAD_REQUEST) from None
        except Exception as exc:  # any driver error: say which and stop
            raise RequestError(
                f"backend {spec.name} at its URL cannot be used: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                Code.BAD_REQUEST,
            ) from None
        if convs or users:
            raise RequestError(
                f"backend {spec.name} already holds timpy data ({convs} conversations, {users} users); "
                "add an empty database", Code.BAD_REQUEST,
            )

    async def remove(self, name: str) -> dict[str, object]:
        current = self.repo.map
        if current.move is not None:
            raise RequestError("a backend move is in progress; wait for it or `timpy backend resume`", Code.BAD_REQUEST)
        if name not in {b.name for b in current.backends}:
            raise RequestError(f"no backend named {name!r}; `timpy backend status` lists them", Code.BAD_REQUEST)
        if len(current.backends) == 1:
            raise RequestError("the last backend cannot be removed", Code.BAD_REQUEST)
        await self.publish(current.start_move(tuple(b for b in current.backends if b.name != name), self._node_id))
        self._start_driver()
        return self.status()

    async def resume(self) -> dict[str, object]:
        if self.repo.map.move is None:
            raise RequestError("no backend move is in progress", Code.BAD_REQUEST)
        self._start_driver()
        return self.status()

    async def wait_moved(self, timeout: float = 600.0) -> dict[str, object]:
        """Wait until no move is in progress (or the move this node drives stopped); return the status."""
        with trio.fail_after(timeout):
            while self.repo.map.move is not None and (self._driving or self._peers.rpc is not None):
                await trio.sleep(0.05)
        if self.repo.map.move is not None:
            raise StorageError(f"the backend move stopped: {self.rebalancer.progress.error}")
        return self.status()

    def status(self) -> dict[str, object]:
        info = self.repo.describe()
        info["driving"] = self._driving
        info["progress"] = self.rebalancer.progress.as_dict()
        return info
