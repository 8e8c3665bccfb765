"""Online rebalancing: moving keys between backends when one is added or removed.

The rebalancer drives the move recorded in the backend map through its
phases (see ``backends``), publishing each new map version and waiting until
every node routes by it before going on:

1. ``copy``: walk every backend's keys; copy those whose place changes to
   their new backend (sealed rows as stored; copying is idempotent).
2. ``freeze``: writes to moving keys wait; copy what changed since, then
   verify every moving key (same head, row counts and members or terminals
   on both sides; for an attachment, its state and chunk count). Any failure here unfreezes (back to ``copy``).
3. ``cleanup``: the new places are current; delete the old copies.

Every step can be run again: copies skip what is there, deletes find nothing
left. So a move is resumed after a crash by running its current phase again,
which any node can do (``timpy backend resume``; a restarted driver or, if
the driver died, the first live node in id order resumes it by itself).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from timpy.errors import StorageError, TimpyError
from timpy.store.backends import BackendMap, backend_ring
from timpy.store.repository import Repository, Store
from timpy.store.rows import Copies
from timpy.store.sharded import ShardedRepository
from timpy.store.tables import KEYS

log = logging.getLogger("timpy.rebalance")

PAGE = 500  # keys per digest page
ROWS = 2000  # rows per copy page
MAX_PAGES = 10_000_000 // PAGE  # bounds every walk


@dataclass
class MoveProgress:
    phase: str = ""
    keys_total: int = 0  # keys on the backends when the move started
    keys_scanned: int = 0  # in the current pass
    keys_moving: int = 0
    keys_verified: int = 0
    rows_copied: int = 0
    rows_deleted: int = 0
    started: float = 0.0
    elapsed_s: float = 0.0
    done: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


Publish = Callable[[BackendMap], Awaitable[None]]


class Rebalancer:
    def __init__(self, store: Store, node_id: str, publish: Publish) -> None:
        assert isinstance(store.repo, ShardedRepository)
        self._store = store
        self._repo: ShardedRepository = store.repo
        self._node_id = node_id
        self._publish = publish
        self.progress = MoveProgress()

    async def run(self) -> None:
        """Drive the move in the current map to its end."""
        p = self.progress
        p.started, p.done, p.error = time.monotonic(), False, ""
        try:
            for _ in range(4):  # copy, freeze, cleanup, then the map without a move
                m = self._repo.map
                if m.move is None:
                    break
                if m.move.driver != self._node_id:
                    m = m.with_driver(self._node_id)
                    await self._publish(m)
                p.phase = m.move.phase  # type: ignore[union-attr]
                log.info("backend move, phase %s (map version %d)", p.phase, m.version)
                if p.phase == "copy":
                    p.keys_total = await self._count_keys(m)
                    await self._copy_pass(m, final=False)
                elif p.phase == "freeze":
                    try:
                        await self._copy_pass(m, final=True)
                        await self._verify(m)
                    except BaseException:
                        # Never leave keys frozen: writes resume at the old place.
                        with trio.CancelScope(shield=True), trio.move_on_after(30):
                            back = BackendMap(m.version + 1, m.backends, replace(m.move, phase="copy"))  # type: ignore[arg-type]
                            await self._publish(back)
                        raise
                else:
                    await self._cleanup(m)
                await self._publish(m.next_phase(self._node_id))
            p.phase, p.done = "done", True
            log.info(
                "backend move done in %.1f s: %d keys moved, %d rows copied, %d rows deleted",
                time.monotonic() - p.started, p.keys_moving, p.rows_copied, p.rows_deleted,
            )
        except TimpyError as exc:
            p.error = exc.text
            raise
        finally:
            p.elapsed_s = round(time.monotonic() - p.started, 3)

    # --- passes -----------------------------------------------------------------

    async def _count_keys(self, m: BackendMap) -> int:
        total = 0
        for b in m.backends:
            convs, users = await self._store.run(self._repo._on, b.name, Repository.key_count)
            total += convs + users
        return total

    async def _moving_keys(self, m: BackendMap, source: str, kind: str):  # type: ignore[no-untyped-def]
        """Pages of (destination, [(key, head)]) for keys on ``source`` that move."""
        repo = self._repo
        after = b""
        for _ in range(MAX_PAGES):
            page = await self._store.run(repo._on, source, Repository.key_digest, kind, after, PAGE)
            if not page:
                return
            after = page[-1][0]
            self.progress.keys_scanned += len(page)
            by_dest: dict[str, list[tuple[bytes, int]]] = defaultdict(list)
            for key, head in page:
                # A backend can hold copies of keys placed elsewhere (message
                # rows kept beside an inbox): only its own keys move from it.
                if m.place(key) == source and m.destination(key) != source:
                    by_dest[m.destination(key)].append((key, head))
            for dest, keys in by_dest.items():
                yield dest, keys

    async def _copy_pass(self, m: BackendMap, final: bool) -> None:
        p = self.progress
        p.keys_scanned = 0
        moving = 0
        for source in [b.name for b in m.backends]:
            for kind, k in KEYS.items():
                async for dest, keys in self._moving_keys(m, source, kind):
                    moving += len(keys)
                    if not k.in_order:
                        await self._copy_differing(source, dest, kind, [key for key, _ in keys])
                        continue
                    behind = dict(await self._store.run(self._repo._on, dest, Repository.behind, kind, keys))
                    for key, _head in keys:
                        if key in behind:
                            await self._copy_key(source, dest, kind, key, behind[key])
                        elif final:
                            # Same head, but terminal cursors, an account or a
                            # group's state may have changed since.
                            await self._copy_key(source, dest, kind, key, _head)
        p.keys_moving = moving

    async def _copy_differing(self, source: str, dest: str, kind: str, keys: list[bytes]) -> None:
        """Keys whose slots come in any order (attachments' chunks): copy those
        whose move statistics differ, from their first slot (the destination
        keeps what it holds)."""
        here = await self._store.run(self._repo._on, source, Repository.key_stats, kind, keys)
        there = await self._store.run(self._repo._on, dest, Repository.key_stats, kind, keys)
        for key in keys:
            if here.get(key) != there.get(key):
                await self._copy_key(source, dest, kind, key, -1)

    async def _copy_key(self, source: str, dest: str, kind: str, key: bytes, have: int) -> None:
        repo = self._repo
        k = KEYS[kind]
        after = max(have, 0) if k.in_order else -1
        limit = min(ROWS, k.page)
        for _ in range(MAX_PAGES):
            copies: Copies = await self._store.run(repo._on, source, Repository.key_copies, kind, key, after, limit)
            if copies:
                self.progress.rows_copied += await self._store.run(repo._on, dest, Repository.apply_copies, copies)
            rows = getattr(copies, k.slots)
            if len(rows) < limit:
                return
            after = rows[-1][1]

    async def _verify(self, m: BackendMap) -> None:
        p = self.progress
        p.keys_verified = 0
        for source in [b.name for b in m.backends]:
            for kind in KEYS:
                async for dest, keys in self._moving_keys(m, source, kind):
                    ids = [k for k, _ in keys]
                    here = await self._store.run(self._repo._on, source, Repository.key_stats, kind, ids)
                    there = await self._store.run(self._repo._on, dest, Repository.key_stats, kind, ids)
                    for k in ids:
                        if here.get(k) != there.get(k):
                            raise StorageError(
                                f"verifying the move: a {kind} key differs between {source} {here.get(k)} "
                                f"and {dest} {there.get(k)}; the move is paused (timpy backend resume retries)"
                            )
                    p.keys_verified += len(ids)

    async def _cleanup(self, m: BackendMap) -> None:
        assert m.move is not None
        p = self.progress
        p.keys_scanned = 0
        old = backend_ring(m.move.previous)
        current = {b.name for b in m.backends}
        for source in [b.name for b in m.move.previous]:
            def homed(conv: bytes, source: str = source) -> bool:
                return source in current and m.place(conv) == source

            for kind in KEYS:
                after = b""
                for _ in range(MAX_PAGES):
                    page = await self._store.run(self._repo._on, source, Repository.key_digest, kind, after, PAGE)
                    if not page:
                        break
                    after = page[-1][0]
                    p.keys_scanned += len(page)
                    gone = [k for k, _ in page if old.owner(k) == source and m.place(k) != source]
                    if gone:
                        convs = gone if kind == "conv" else []
                        users = gone if kind == "user" else []
                        others = {kind: gone} if kind not in ("conv", "user") else None
                        p.rows_deleted += await self._store.run(
                            self._repo._on, source, Repository.forget, convs, users, homed, others
                        )
