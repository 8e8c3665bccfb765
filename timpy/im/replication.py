"""Copies of every key on its R replicas (embedded mode).

Three mechanisms keep the copies whole:

* **Write quorum.** An owner sends the rows of each write to the key's other
  replicas and acknowledges the write once W copies (its own included) are
  stored. A copy that fails is left to the next two.
* **Catch-up on takeover.** Before a node first writes or reads a key after
  the ring changed, it pulls what the key's other replicas have beyond its own
  copy. An acknowledged write is on W of the old replicas, and removing a node
  from the ring keeps the survivors in the new replica set, so the new owner
  continues the sequence with no gap and no reuse.
* **Repair (anti-entropy).** After every ring change (and every ``interval``
  seconds), each node walks the keys it holds (conversations, users and
  attachments: every kind of the registry, ``timpy.store.tables``) in pages and compares their
  content with each other replica (``timpy.store.digest``): one digest per
  key for a page (the replica also names the keys of that range it holds
  and this node lacks), bucket digests for a key that differs, slot hashes
  for a bucket that differs; then exactly the differing rows are copied,
  both ways. A slot held with two different values keeps the one with the
  higher stamp (then the lower hash), on both sides (reported in the log and
  metrics; ``digest.winner``). This moves
  ranges to nodes that became replicas, repairs a node that was down, and
  fills holes below the head.

Rows travel sealed, exactly as stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial

import trio

from timpy.cluster import catalog as ops
from timpy.cluster.ownership import Epoch
from timpy.cluster.rpc import Call
from timpy.errors import Code, StorageError, TimpyError
from timpy.im.peers import Peers
from timpy.store import digest
from timpy.store.repository import Store
from timpy.store.rows import Copies, InboxItem
from timpy.store.tables import KEYS

log = logging.getLogger("timpy.replication")

QUORUM_TIMEOUT = 3.0
CATCH_UP_TIMEOUT = 2.0
DIGEST_PAGE = 500
COPY_PAGE = 2000
RANGE_LIMIT = 10_000  # keys a replica reports held beyond the asker's list, per range
UNDO_ATTEMPTS = 3
# Seconds catch-up still waits for the other replicas once enough have
# answered: a replica that is slow or across a split no longer holds the key
# for the whole CATCH_UP_TIMEOUT, and the ones that answer at once are all read.
CATCH_UP_GRACE = 0.3
UNDONE_MEMORY = 120.0  # seconds a node drops late copies of rows it undid


class CopiesOutOfReach(StorageError):
    """Too few of a key's previous replicas answered to be sure of its latest writes."""


@dataclass
class RepairProgress:
    passes: int = 0
    running: bool = False
    keys_checked: int = 0  # in the last (or running) pass
    keys_repaired: int = 0  # keys whose copies differed, in the last pass
    rows_sent: int = 0  # rows this node copied to others, since start
    ranges_compared: int = 0  # key ranges and buckets compared with replicas, since start
    rows_repaired: int = 0  # rows copied by repair, either way, since start
    conflicting_slots: int = 0  # slots held with different values on two replicas, since start
    inbox_entries_restored: int = 0  # messages put back in an inbox after losing their slot, since start
    last_pass_s: float = 0.0
    copy_failures: int = 0  # copies that missed the write quorum's wait

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Replicator:
    def __init__(
        self, store: Store, peers: Peers, restore_inbox_entry: Callable[[InboxItem], Awaitable[None]] | None = None,
        interval: float = 60.0, shared: bool = False,
    ) -> None:
        # With shared backends every node reads and writes the same databases,
        # whose own replication keeps the data: there is nothing to copy.
        self.shared = shared
        self._store = store
        self._peers = peers
        self.interval = interval
        self.progress = RepairProgress()
        self.refused_early = 0  # catch-ups refused at once: too few of the replicas they need alive
        # Appends an inbox entry through the user's owner's writer (repair puts
        # back entries that lost their slot); None: nothing is put back.
        self._restore_inbox_entry = restore_inbox_entry
        self._losers: dict[bytes, list[tuple[bytes, int, bytes, int, bytes, int]]] = {}
        self._warm_version = -1
        self._warm: set[tuple[str, bytes]] = set()
        self._locks: dict[tuple[str, bytes], trio.Lock] = {}
        self._wake_send, self._wake = trio.open_memory_channel[None](1)
        self._undone: dict[tuple, float] = {}  # rows undone lately -> until when late copies of them are dropped
        self._pass_missed = False  # a comparison of the running repair pass failed: it is not a full pass
        self._register()

    # --- write quorum -------------------------------------------------------

    async def to_replicas(self, key: bytes, fetch: Callable[[], Awaitable[Copies]]) -> None:
        """After a change of one key at its owner: copy what ``fetch`` reads to
        the key's other replicas and wait for the write quorum (embedded
        cluster mode only; a standalone node or shared backends have nothing to do)."""
        if self._peers.rpc is None or self.shared:
            return
        placement = self._peers.placement
        nodes = frozenset(placement.replicas(key)) - {self._peers.self_id}
        if not nodes:
            return
        copies = await fetch()
        await self.replicate({n: copies for n in nodes}, [(nodes, placement.acks_needed(key))])

    async def replicate(self, copies: dict[str, Copies], groups: Iterable[tuple[frozenset[str], int]]) -> None:
        """Send each node its copies; return once every group of nodes has
        acknowledged as many as it needs."""
        needs = [(nodes, n) for nodes, n in groups if n > 0]
        copies = {node: c for node, c in copies.items() if c and node != self._peers.self_id}
        if not copies:
            self._peers.require_write()
            if needs:
                raise TimpyError("not enough replicas to store this write; retry", Code.UNAVAILABLE)
            return
        self._peers.require_write()
        epoch = self._peers.epoch_number  # replicas that accepted a newer epoch refuse these copies
        calls = {node: self._peers.start_call(node, ops.COPIES_APPLY, ops.CopiesApply(c.pack(), epoch))
                 for node, c in copies.items()}
        acked: set[str] = set()
        done = trio.Event()
        answered = 0

        def satisfied() -> bool:
            return all(len(acked & nodes) >= n for nodes, n in needs)

        def answer(node: str, call: Call) -> None:  # run as each answer is read: no task per replica
            nonlocal answered
            answered += 1
            try:
                call.outcome(QUORUM_TIMEOUT)
            except TimpyError as exc:
                self.progress.copy_failures += 1
                log.debug("copy to %s failed: %s", node, exc)
            else:
                acked.add(node)
            if answered == len(calls) or satisfied():
                done.set()

        if satisfied():
            for call in calls.values():
                call.forget()
            return
        for node, call in calls.items():
            call.then(partial(answer, node))
        try:
            with trio.move_on_after(QUORUM_TIMEOUT):
                await done.wait()
        finally:
            for call in calls.values():
                call.forget()
        if not satisfied():
            self.progress.copy_failures += sum(not call.answered() for call in calls.values())
            raise TimpyError(
                "the write reached fewer replicas than the write quorum; it may be stored: send it again",
                Code.UNAVAILABLE,
            )
        self._peers.require_write()  # acknowledged only while the lease still holds

    # --- undoing a write that missed its quorum --------------------------------

    async def undo(
        self, epoch: int, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]],
        stamp: int = 0,
    ) -> None:
        """The rows of a write that did not reach its write quorum were never
        acknowledged: remove them here and on every node they may have reached,
        so the next owner's numbering cannot meet a different message at the
        same place. Only where the epoch is still ``epoch``: a node that
        accepted a newer one may have handed the rows to a new owner, who
        then keeps them. Best effort: a node that cannot be reached keeps its
        copy (docs/consistency.md, "Limits"). Only rows with the write's
        ``stamp`` go: a later write of the same slot and message stays."""
        if not messages and not inbox:
            return
        self._remember_undone(messages, inbox, stamp)
        await self._undo_here(epoch, messages, inbox, stamp)
        others = sorted(self._peers.placement.members - {self._peers.self_id})
        undo = ops.CopiesUndoAt(epoch, messages, inbox, stamp)

        async def undo_at(node: str) -> None:
            for attempt in range(UNDO_ATTEMPTS):  # a lost request or answer is retried: undo is idempotent
                try:
                    await self._peers.start_call(node, ops.COPIES_UNDO_AT, undo).result(CATCH_UP_TIMEOUT)
                    return
                except TimpyError as exc:
                    if attempt == UNDO_ATTEMPTS - 1:
                        log.warning("could not undo an unacknowledged write on %s: %s", node, exc.text)

        async with trio.open_nursery() as nursery:
            for node in others:
                nursery.start_soon(undo_at, node)

    async def _undo_here(
        self, epoch: int, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]],
        stamp: int = 0,
    ) -> int:
        ownership = self._peers.ownership
        if ownership is None or ownership.epoch.number != epoch:
            return 0
        try:
            async with ownership.applying(epoch):  # a fence from a newer epoch waits for it
                return await self._store.run(self._store.local.undo_writes, messages, inbox, stamp)
        except TimpyError:
            return 0

    def _remember_undone(
        self, messages: list[tuple[bytes, int, bytes]], inbox: list[tuple[bytes, int, bytes, int]], stamp: int = 0
    ) -> None:
        """A copy of an undone row may still be on its way: drop it when it
        comes. Only a copy with the undone write's stamp (0: any): a retry that
        places the same message at the same slot again is a later write, with
        a higher stamp, and its copies must land."""
        expires = trio.current_time() + UNDONE_MEMORY
        for row in messages:
            self._undone[("m", *row, stamp)] = expires
        for entry in inbox:
            self._undone[("i", *entry, stamp)] = expires
        if len(self._undone) > 100_000:
            now = trio.current_time()
            self._undone = {k: t for k, t in self._undone.items() if t > now}

    def _without_undone(self, copies: Copies) -> Copies:
        if not self._undone:
            return copies
        now = trio.current_time()
        live = {k for k, t in self._undone.items() if t > now}
        copies.messages = [
            r for r in copies.messages
            if ("m", bytes(r[0]), int(r[1]), bytes(r[2]), int(r[5])) not in live
            and ("m", bytes(r[0]), int(r[1]), bytes(r[2]), 0) not in live
        ]
        copies.inbox = [
            e for e in copies.inbox
            if ("i", bytes(e[0]), int(e[1]), bytes(e[2]), int(e[3]), int(e[4])) not in live
            and ("i", bytes(e[0]), int(e[1]), bytes(e[2]), int(e[3]), 0) not in live
        ]
        return copies

    # --- catch-up on takeover ----------------------------------------------

    def is_warm(self, kind: str, key: bytes) -> bool:
        """Whether ``ensure`` has nothing to do for this key (until the ring changes)."""
        return self._peers.rpc is None or self.shared or self._peers.placement.alone or self._is_warm(kind, key)

    def _is_warm(self, kind: str, key: bytes) -> bool:
        if self._warm_version != self._peers.placement.version:
            self._warm.clear()
            self._warm_version = self._peers.placement.version
        return (kind, key) in self._warm

    async def ensure(self, kind: str, key: bytes) -> None:
        """Pull what the key's other replicas hold beyond this node's copy,
        once per ring version ("conv" or "user")."""
        if self._peers.rpc is None or self.shared:
            return
        await self._peers.await_write()
        if self._peers.placement.alone:
            # No other node ever held a key of this ring (a default `timpy
            # node`, a cluster of one): nothing to pull, and nothing to
            # remember per key (the warm set grew by every user and
            # conversation the node ever served, as long as the ring stayed).
            return
        if self._is_warm(kind, key):
            return
        lock = self._locks.setdefault((kind, key), trio.Lock())
        async with lock:
            if self._is_warm(kind, key):
                return
            placement = self._peers.placement
            version = placement.version
            me = self._peers.self_id
            current = placement.replicas(key)
            # An acknowledged write is on W of the key's replicas in the ring
            # it was written under, and a key untouched since is still only
            # there: for every ring of the history (back to the last one its
            # data is known to have left), hear from enough of the key's
            # replicas in it (this node counts if it was one) that any W of
            # them include one that answered, else refuse the key
            # (docs/consistency.md, "Catch-up across several rings").
            rings = placement.history_replicas(key) or [current]
            others = sorted(set(current).union(*rings) - {me} - placement.gone)
            needs = [(set(r), max(0, placement.answers_needed(r) - (me in r))) for r in rings]

            def enough(answered: set[str]) -> bool:
                return all(len(answered & replicas) >= need for replicas, need in needs)

            if others:
                # Replicas the membership holds dead will not answer: when the
                # others cannot be enough, refuse now instead of waiting out
                # every timeout (the writer waits on catch-up).
                dead = self._peers.ownership.held_dead() if self._peers.ownership is not None else frozenset()
                if dead & set(others) and not enough(set(others) - dead):
                    self.refused_early += 1
                    answered = set(others) - dead
                else:
                    answered = await self._pull(kind, key, others, enough)
                for replicas in rings:
                    need = max(0, placement.answers_needed(replicas) - (me in replicas))
                    got = len(answered & set(replicas))
                    if got < need:
                        raise CopiesOutOfReach(
                            f"this node could reach only {got} of the {len(replicas) - (me in replicas)} "
                            f"other nodes that held this {'conversation' if kind == 'conv' else 'account'}; "
                            f"it needs {need} to be sure it has every message: retry later",
                            Code.UNAVAILABLE,
                        )
            if self._peers.placement.version == version:
                self._warm.add((kind, key))
        if not lock.locked():
            self._locks.pop((kind, key), None)

    async def _pull(
        self, kind: str, key: bytes, others: list[str], enough: Callable[[set[str]], bool] | None = None
    ) -> set[str]:
        """Fence each node at this node's epoch and copy what it has beyond
        our copy; returns the nodes that answered completely. Once the nodes
        that answered are ``enough``, the others get ``CATCH_UP_GRACE`` more
        and are then left (each is asked with ``CATCH_UP_TIMEOUT``)."""
        repo = self._store.local
        head_fn = repo.conversation_head if kind == "conv" else repo.inbox_head
        mine = await self._store.run(head_fn, key)
        epoch = self._peers.ownership.epoch if self._peers.ownership is not None else None
        copies_of = ops.COPIES_CONV if kind == "conv" else ops.COPIES_USER
        answered: set[str] = set()

        async def from_node(node: str) -> None:
            after = max(mine, 0)
            try:
                for _ in range(1000):  # bounded: COPY_PAGE rows a round
                    raw = await self._peers.call(
                        node, copies_of, ops.CopiesAfter(key, after, COPY_PAGE, epoch), timeout=CATCH_UP_TIMEOUT
                    )
                    copies = Copies.unpack(raw)
                    if copies:
                        await self._store.run(repo.apply_copies, copies)
                    rows = copies.messages if kind == "conv" else copies.inbox
                    if len(rows) < COPY_PAGE:
                        break
                    after = rows[-1][1]
                # Below the head too: a slot held here with a value that loses
                # to the replica's (a higher epoch), or missing here. The pull
                # above fenced the replica, so its copy no longer changes under
                # an older epoch.
                await self._fetch_differences(kind, node, key)
                answered.add(node)
            except TimpyError as exc:
                log.info("catching up %s from %s: %s", kind, node, exc.text)

        pending = len(others)
        changed = trio.Event()

        async def one(node: str) -> None:
            nonlocal pending
            try:
                await from_node(node)
            finally:
                pending -= 1
                changed.set()

        async with trio.open_nursery() as nursery:
            for node in others:
                nursery.start_soon(one, node)
            while pending:
                if enough is not None and enough(answered):
                    with trio.move_on_after(CATCH_UP_GRACE):
                        while pending:
                            changed = trio.Event()
                            await changed.wait()
                    nursery.cancel_scope.cancel()
                    break
                changed = trio.Event()
                await changed.wait()
        return set(answered)

    async def _fetch_differences(self, kind: str, node: str, key: bytes) -> None:
        """Make this node's copy of one key take every slot where ``node``'s
        value wins or this node has none (slot digests, as repair compares):
        a catch-up that starts from the last slot both agree on, not the head."""
        repo = self._store.local
        mine = await self._store.run(repo.repair_buckets, kind, key)
        raw = await self._peers.call(node, ops.REPAIR_BUCKETS, ops.RepairKey(kind, key), timeout=CATCH_UP_TIMEOUT)
        if raw is None:
            return
        theirs = dict(raw.buckets)
        differ = digest.diff_buckets(mine[1] if mine is not None else {}, theirs)
        if not differ:
            return
        my_slots = await self._store.run(repo.repair_slots, kind, key, differ)
        their_slots = await self._peers.call(node, ops.REPAIR_SLOTS, ops.RepairSlots(kind, key, differ),
                                             timeout=CATCH_UP_TIMEOUT)
        slots = digest.diff_slots(my_slots, dict(their_slots))
        if not slots.fetch:
            return
        conflicts = [i for i in slots.fetch if i in set(slots.conflicts)]
        if kind == "user" and conflicts:
            losers = await self._inbox_losers(node, key, [], conflicts)
            if losers:
                self._losers.setdefault(key, []).extend(losers)
        got = Copies.unpack(await self._peers.call(
            node, ops.REPAIR_ROWS, ops.RepairRows(kind, key, slots.fetch, False), timeout=CATCH_UP_TIMEOUT
        ))
        fetched, cleared = await self._store.run(repo.apply_repair, kind, key, got, conflicts)
        self.progress.rows_repaired += fetched
        if cleared:
            self.progress.conflicting_slots += cleared
            log.warning("catch-up: %s %s held %d slot(s) with values that lose to %s's (a higher epoch); replaced",
                        KEYS[kind].noun, key.hex(), cleared, node)

    # --- anti-entropy -------------------------------------------------------

    def trigger(self) -> None:
        try:
            self._wake_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # a pass is due already

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.receive()
            await trio.sleep(1.0)  # let a burst of membership changes settle
            try:
                await self.repair_pass()
            except TimpyError as exc:
                log.warning("anti-entropy pass stopped: %s", exc.text)

    async def repair_pass(self) -> None:
        """Compare the content of every key held here with its other replicas
        (range digests, then bucket digests, then slots) and copy exactly what
        differs, both ways. Keys a replica holds and this node lacks are found
        by the range each page of keys covers."""
        if self._peers.rpc is None or self.shared or self._peers.placement.single:
            return
        p = self.progress
        p.running, started = True, time.monotonic()
        epoch, version = self._peers.epoch_number, self._peers.placement.version
        self._pass_missed = False
        before = (p.rows_repaired, p.conflicting_slots)
        checked = repaired = 0
        try:
            for kind in KEYS:  # conversations, users, attachments
                after = b""
                for _ in range(10_000_000 // DIGEST_PAGE):  # bounded walk over the keys held here
                    page = await self._store.run(self._store.local.repair_keys, kind, after, None, DIGEST_PAGE)
                    upto = page[-1] if len(page) == DIGEST_PAGE else None
                    checked += len(page)
                    # Twice when the first sweep brought rows here: what one
                    # replica gave this node reaches the others in the same pass.
                    for _sweep in range(2):
                        roots = await self._store.run(self._store.local.repair_roots, kind, page)
                        fetched = 0
                        for node in self._peers.others():
                            r, f = await self._compare_range(kind, node, after, upto, page, roots)
                            repaired += r
                            fetched += f
                        if not fetched:
                            break
                    p.keys_checked, p.keys_repaired = checked, repaired
                    await self._restore_all_losers()
                    if upto is None:
                        break
                    after = upto
            placement = self._peers.placement
            dropped = await self._store.run(  # catch-up may still read a previous replica's copy
                self._store.local.drop_unreferenced_messages,
                lambda k: placement.holds(k) or placement.held_before(k),
            )
        finally:
            p.running = False
            p.passes += 1
            p.last_pass_s = round(time.monotonic() - started, 3)
        own = self._peers.ownership
        if not self._pass_missed and placement.version == version and own is not None:
            # Every key held here reached each of its replicas under this
            # ring: rings whose keys all have such a holder can leave the history.
            own.note_repaired(epoch)
        rows, conflicts = p.rows_repaired - before[0], p.conflicting_slots - before[1]
        if dropped:
            log.info("repair: dropped %d message row(s) of conversations this node holds no copy of", dropped)
        if repaired:
            log.info(
                "repair: %d keys checked, %d differed, %d rows copied, %d conflicting slots in %.2f s",
                checked, repaired, rows, conflicts, p.last_pass_s,
            )

    async def _compare_range(
        self, kind: str, node: str, after: bytes, upto: bytes | None, page: list[bytes], roots: dict[bytes, bytes]
    ) -> tuple[int, int]:
        """Compare one range of keys with ``node``; returns (keys that
        differed, rows this node fetched)."""
        placement = self._peers.placement
        mine = [(k, roots[k]) for k in page if k in roots and node in placement.replicas(k)]
        try:
            differing = await self._peers.call(
                node, ops.REPAIR_RANGE, ops.RepairRange(kind, after, upto, mine, self._peers.self_id),
                timeout=CATCH_UP_TIMEOUT * 5,
            )
        except TimpyError as exc:
            log.debug("repair with %s: %s", node, exc.text)
            self._pass_missed = True
            return 0, 0
        self.progress.ranges_compared += 1
        repaired = fetched = 0
        for key in differing:
            try:
                f = await self._repair_key(kind, node, key)
            except TimpyError as exc:
                log.debug("repair of a key with %s: %s", node, exc.text)
                self._pass_missed = True
                return repaired, fetched
            repaired += 1
            fetched += f
        return repaired, fetched

    async def _repair_key(self, kind: str, node: str, key: bytes) -> int:
        """Make this node's and ``node``'s copies of one key equal; returns the rows fetched."""
        repo, p = self._store.local, self.progress
        mine = await self._store.run(repo.repair_buckets, kind, key)
        raw = await self._peers.call(node, ops.REPAIR_BUCKETS, ops.RepairKey(kind, key), timeout=CATCH_UP_TIMEOUT * 5)
        my_meta, my_buckets = mine if mine is not None else (b"", {})
        their_meta, their_buckets = (raw.meta, dict(raw.buckets)) if raw is not None else (b"", {})
        differ = digest.diff_buckets(my_buckets, their_buckets)
        p.ranges_compared += len(set(my_buckets) | set(their_buckets))
        meta = my_meta != their_meta
        slots = digest.SlotDiff()
        if differ:
            my_slots = await self._store.run(repo.repair_slots, kind, key, differ)
            theirs = await self._peers.call(node, ops.REPAIR_SLOTS, ops.RepairSlots(kind, key, differ),
                                            timeout=CATCH_UP_TIMEOUT * 5)
            slots = digest.diff_slots(my_slots, dict(theirs))
        conflicts = set(slots.conflicts)
        fetched = cleared = 0
        losers: list[tuple[bytes, int, bytes, int, bytes, int]] = []  # inbox entries that lost their slot, with messages
        if kind == "user" and conflicts:
            losers = await self._inbox_losers(node, key, [i for i in slots.send if i in conflicts],
                                              [i for i in slots.fetch if i in conflicts])
        page = KEYS[kind].page  # big slots (an attachment's chunks) go a few at a time
        if raw and (slots.fetch or meta):
            for start in range(0, max(len(slots.fetch), 1), page):
                wanted = slots.fetch[start : start + page]
                got = Copies.unpack(await self._peers.call(
                    node, ops.REPAIR_ROWS, ops.RepairRows(kind, key, wanted, meta and start == 0), timeout=10.0
                ))
                f, here = await self._store.run(
                    repo.apply_repair, kind, key, got, [i for i in wanted if i in conflicts]
                )
                fetched += f
                cleared += here
        sent = 0
        if mine is not None and (slots.send or meta):
            for start in range(0, max(len(slots.send), 1), page):
                wanted = slots.send[start : start + page]
                copies = await self._store.run(repo.repair_rows, kind, key, wanted, meta and start == 0)
                n, there = await self._peers.call(
                    node, ops.REPAIR_APPLY,
                    ops.RepairApply(kind, key, copies.pack(), [i for i in wanted if i in conflicts]), timeout=10.0,
                )
                sent += n
                cleared += there
        if losers:  # put back once every replica of the page is merged
            self._losers.setdefault(key, []).extend(losers)
        p.rows_repaired += fetched + sent
        p.rows_sent += sent
        if conflicts or cleared:
            p.conflicting_slots += max(len(conflicts), cleared)
            log.warning(
                "repair: %s %s held %d slot(s) with different values here and on %s (%s); "
                "kept the value with the higher stamp (then the lower hash) on both",
                KEYS[kind].noun, key.hex(), max(len(conflicts), cleared), node,
                ", ".join(str(i) for i in sorted(conflicts)[:10]) or "the same message in two slots",
            )
        return fetched

    async def _inbox_losers(
        self, node: str, user: bytes, theirs_lose: list[int], mine_lose: list[int]
    ) -> list[tuple[bytes, int, bytes, int, bytes, int]]:
        """The inbox entries (conv, seq) and their message rows that lose
        their slots: a message must not leave the inbox with its slot."""
        out: list[tuple[bytes, int, bytes, int, bytes, int]] = []
        copies = Copies()
        if mine_lose:
            copies.merge(await self._store.run(self._store.local.repair_rows, "user", user, mine_lose, False))
        if theirs_lose:
            copies.merge(Copies.unpack(await self._peers.call(
                node, ops.REPAIR_ROWS, ops.RepairRows("user", user, theirs_lose, False), timeout=10.0
            )))
        rows = {(r[0], r[1]): r for r in copies.messages}
        for _user, _pos, conv, seq, _epoch in copies.inbox:
            if (conv, seq) in rows:
                out.append(rows[(conv, seq)])
        return out

    async def _restore_all_losers(self) -> None:
        losers, self._losers = self._losers, {}
        for user, entries in losers.items():
            try:
                await self._restore_losers(user, entries)
            except TimpyError as exc:
                log.warning("repair: could not put back messages that lost their inbox slots (%s); "
                            "the next pass tries again", exc.text)

    async def _restore_losers(self, user: bytes, losers: list[tuple[bytes, int, bytes, int, bytes, int]]) -> None:
        """Put back at the head of the inbox (through the user's owner) each
        message that lost its inbox slot and is in no other slot here."""
        held = await self._store.run(self._store.local.inbox_holds, user, [(c, q) for c, q, *_ in losers])
        for conv, seq, dedup, created_ms, sealed, epoch in losers:
            if (conv, seq) in held or self._restore_inbox_entry is None:
                continue
            held.add((conv, seq))
            await self._restore_inbox_entry(InboxItem(user, conv, seq, dedup, created_ms, sealed, epoch))
            self.progress.inbox_entries_restored += 1
            log.warning("repair: message %s/%d lost its inbox slot of user %s to another; appended again",
                        conv.hex(), seq, user.hex())

    # --- what peers ask of this node ---------------------------------------

    def _register(self) -> None:
        # self._store.local per call: registered in shared-backend mode too, where no peer asks these.
        ownership = self._peers.ownership
        serve = self._peers.serve

        async def apply(a: ops.CopiesApply) -> int:
            copies = self._without_undone(_copies(a.copies))
            if ownership is None:
                return await self._store.run(self._store.local.apply_copies, copies)
            async with ownership.applying(a.epoch):  # a stale writer's copy is refused
                return await self._store.run(self._store.local.apply_copies, copies, True)

        async def undo(a: ops.CopiesUndo) -> int:
            self._remember_undone(a.messages, a.inbox)  # a node before stamps in undo: any stamp
            return await self._undo_here(a.epoch, a.messages, a.inbox)

        async def undo_at(a: ops.CopiesUndoAt) -> int:
            self._remember_undone(a.messages, a.inbox, a.stamp)
            return await self._undo_here(a.epoch, a.messages, a.inbox, a.stamp)

        async def fence(epoch: Epoch | None) -> None:
            # A new owner reads this copy: from now on refuse writes from older epochs.
            if ownership is not None and epoch is not None:
                await ownership.fence(epoch)

        async def conv(a: ops.CopiesAfter) -> list:
            await fence(a.epoch)
            return (await self._store.run(self._store.local.conversation_copies, a.key, a.after, min(a.limit, COPY_PAGE))).pack()

        async def user(a: ops.CopiesAfter) -> list:
            await fence(a.epoch)
            return (await self._store.run(self._store.local.user_copies, a.key, a.after, min(a.limit, COPY_PAGE))).pack()

        async def repair_range(a: ops.RepairRange) -> list[bytes]:
            # The keys of the asker's range whose content differs here, and
            # the keys of that range held here that the asker should hold too.
            kind = _kind(a.kind)
            theirs = dict(a.mine)
            roots = await self._store.run(self._store.local.repair_roots, kind, list(theirs))
            differing = [k for k, r in theirs.items() if roots.get(k) != r]
            held = await self._store.run(self._store.local.repair_keys, kind, a.after, a.upto, RANGE_LIMIT)
            placement, me = self._peers.placement, self._peers.self_id
            for k in held:
                if k not in theirs:
                    replicas = placement.replicas(k)
                    if a.asker in replicas and me in replicas:
                        differing.append(k)
            return differing

        async def repair_buckets(a: ops.RepairKey) -> ops.Buckets | None:
            got = await self._store.run(self._store.local.repair_buckets, _kind(a.kind), a.key)
            return None if got is None else ops.Buckets(got[0], sorted(got[1].items()))

        async def repair_slots(a: ops.RepairSlots) -> list[tuple[int, bytes]]:
            return sorted((await self._store.run(self._store.local.repair_slots, _kind(a.kind), a.key, a.buckets)).items())

        async def repair_rows(a: ops.RepairRows) -> list:
            return (await self._store.run(self._store.local.repair_rows, _kind(a.kind), a.key, a.slots, a.meta)).pack()

        async def repair_apply(a: ops.RepairApply) -> tuple[int, int]:
            added, cleared = await self._store.run(self._store.local.apply_repair, _kind(a.kind), a.key, _copies(a.copies), a.replace)
            self.progress.rows_repaired += added
            if cleared:
                self.progress.conflicting_slots += cleared
                log.warning("repair: replaced %d conflicting slot(s) of %s with a replica's (higher stamp wins)",
                            cleared, a.key.hex())
            return added, cleared

        serve(ops.COPIES_APPLY, apply)
        serve(ops.COPIES_UNDO, undo)
        serve(ops.COPIES_UNDO_AT, undo_at)
        serve(ops.COPIES_CONV, conv)
        serve(ops.COPIES_USER, user)
        serve(ops.REPAIR_RANGE, repair_range)
        serve(ops.REPAIR_BUCKETS, repair_buckets)
        serve(ops.REPAIR_SLOTS, repair_slots)
        serve(ops.REPAIR_ROWS, repair_rows)
        serve(ops.REPAIR_APPLY, repair_apply)


def _copies(raw: list) -> Copies:
    """Rows another node sent (``Copies.pack()``): refused in plain words when they are not the tables' layout."""
    try:
        return Copies.unpack(raw)
    except (ValueError, TypeError, IndexError) as exc:
        raise TimpyError(f"a node of the cluster sent copies this node cannot read ({exc}); "
                         "the nodes may run different versions of timpy", Code.BAD_REQUEST) from None


def _kind(kind: object) -> str:
    if kind not in KEYS:
        raise TimpyError(f"unknown kind of key {kind!r}", Code.BAD_REQUEST)
    return str(kind)
