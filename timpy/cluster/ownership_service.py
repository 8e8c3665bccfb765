"""The trio shell around the ownership state machine (``ownership.py``).

It renews this node's lease every ``renew_interval`` by asking every voting
member for a grant, proposes a new epoch when the live members differ from
the ring (only the lowest live voter does), answers the other nodes' grant
and accept requests, fences copies from older epochs, and keeps the accepted
epoch and the voters' addresses in the data directory, so a restarted node
rejoins the members it knew without ``--join``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from timpy.cluster import catalog as ops
from timpy.cluster.membership import Membership, State
from timpy.cluster.ownership import (
    NO_EPOCH,
    Epoch,
    LeaseRound,
    Ownership,
    OwnershipConfig,
    leaves_out_alive,
)
from timpy.cluster.rpc import Rpc
from timpy.errors import Code, TimpyError

log = logging.getLogger("timpy.cluster")

MEMBERS_FILE = "cluster-members.json"
FOUND_AFTER = 10.0  # seconds seeing members alive without being added, before asking whether anyone has a ring
BOOTSTRAP_GRACE = 3.0  # seconds every member seen alive must have had no ring before the lowest id founds one
REPAIRED_RETELL = 5.0  # seconds between tellings of the same finished repair pass (one-way notices)


class QuorumLost(TimpyError):
    """This node cannot prove it owns the key: no majority confirms it."""

    code = Code.UNAVAILABLE


def load_members(data_dir: Path | None) -> tuple[Epoch, dict[str, str]] | None:
    """The epoch and voters' addresses a node kept (None: never joined a cluster here)."""
    if data_dir is None:
        return None
    path = data_dir / MEMBERS_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Epoch.unpack(raw["epoch"]), {str(k): str(v) for k, v in raw["addresses"].items()}


def save_members(data_dir: Path, epoch: Epoch, addresses: dict[str, str]) -> None:
    """Written atomically: a crash leaves the old file or the new one."""
    path = data_dir / MEMBERS_FILE
    tmp = path.with_suffix(".tmp")
    body = json.dumps({"epoch": epoch.pack(), "addresses": addresses}, sort_keys=True)
    with open(tmp, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class OwnershipService:
    def __init__(
        self,
        self_id: str,
        rpc: Rpc,
        membership: Callable[[], Membership | None],
        on_epoch: Callable[[Epoch], None],
        config: OwnershipConfig | None = None,
        data_dir: Path | None = None,
        joining: bool = False,
    ) -> None:
        self.self_id = self_id
        self.config = config or OwnershipConfig()
        self._rpc = rpc
        self._membership = membership
        self._on_epoch = on_epoch
        self._data_dir = data_dir
        kept = load_members(data_dir)
        self.addresses: dict[str, str] = {}
        if kept is not None:
            epoch, self.addresses = kept
        elif joining:
            epoch = NO_EPOCH  # not a voter until the cluster accepts us: never a cluster of one
        else:
            epoch = Epoch(1, frozenset({self_id}), frozenset({self_id}))  # a new cluster's first member
        self.core = Ownership(self_id, self.config, epoch, trio.current_time())
        self._applying: dict[int, int] = {}
        self._drained = trio.Event()
        self._saved: tuple[Epoch, dict[str, str]] | None = None
        self.lease_lost_at: float | None = None  # when this node last stopped holding a lease
        self._repaired_told, self._repaired_told_at = 0, 0.0  # the repair pass last told to the voters, and when
        self._unfounded_since: float | None = None
        self._alone_since: float | None = None  # since when this node, with no ring, sees members alive
        self._ring_heard_at: float | None = None  # when a member last said it has a ring
        rpc.serve(ops.OWN_GRANT, self._on_grant)
        rpc.serve(ops.OWN_ACCEPT, self._on_accept)
        rpc.serve(ops.OWN_ESTABLISHED, self._on_established)
        rpc.serve(ops.OWN_FENCE, self._on_fence)
        rpc.serve(ops.OWN_REPAIRED, self._on_repaired)

    # --- what the node asks -------------------------------------------------

    @property
    def epoch(self) -> Epoch:
        return self.core.epoch

    def has_lease(self) -> bool:
        return self.core.has_lease(trio.current_time())

    def held_dead(self) -> frozenset[str]:
        """The members this node's membership holds dead or gone (left): they
        will not answer now. Suspects count as alive."""
        m = self._membership()
        if m is None:
            return frozenset()
        return frozenset(n for n, mem in m.members.items() if mem.state in (State.DEAD, State.LEFT))

    def require_lease(self) -> None:
        """Raise UNAVAILABLE, in words a user understands, unless a majority confirms this node's lease."""
        if not self.core.has_lease(trio.current_time()):
            raise QuorumLost(self.core.refusal())

    def cut_off(self) -> str | None:
        """Why this node may not act for the cluster now, when it has no lease
        and no majority answers it (not merely a ring change on its way); else None."""
        now = trio.current_time()
        if self.core.has_lease(now) or self.core.ring_changing():
            return None
        return self.core.refusal()

    async def wait_for_lease(self, timeout: float = 3.0) -> None:
        """While the ring is changing (a majority answers, the lease is on its
        way) wait up to ``timeout`` for it; then as ``require_lease``. A node
        cut off from the majority refuses at once."""
        if not self.core.has_lease(trio.current_time()):  # else no timer: the path of every request
            with trio.move_on_after(timeout):
                while not self.core.has_lease(trio.current_time()) and self.core.ring_changing():
                    await trio.sleep(0.05)
        self.require_lease()

    def seeds(self) -> list[str]:
        """Addresses of the voters this node knew, to rejoin them after a restart."""
        return sorted(a for n, a in self.addresses.items() if n != self.self_id and a)

    def forget(self, name: str) -> None:
        m = self._membership()
        state = m.state_of(name) if m is not None else None
        if name not in self.core.epoch.voters:
            raise TimpyError(f"{name} is not a voting member of this cluster", Code.BAD_REQUEST)
        if name == self.self_id or state == State.ALIVE:
            raise TimpyError(
                f"{name} is alive (as this node sees it); stop it first, or let it leave gracefully", Code.BAD_REQUEST
            )
        self.core.forget(name)

    def status(self) -> dict[str, object]:
        e = self.core.epoch
        now = trio.current_time()
        return {
            "epoch": e.number,
            "voters": sorted(e.voters),
            "ring_members": sorted(e.members),
            "lease": self.core.has_lease(now),
            "lease_left_s": round(max(0.0, self.core.lease_until - now), 3) if self.core.has_lease(now) else 0.0,
            "reached": self.core.reached,
            "forgotten": sorted(self.core.forgotten),
            "earlier_rings": len(e.rings),
            "ring_change_held": self.core.history_full,
        }

    # --- fencing at replicas ------------------------------------------------

    @asynccontextmanager
    async def applying(self, epoch_number: int) -> AsyncIterator[None]:
        """Around storing a copy written under ``epoch_number``: refused when
        stale, and counted so that a fence waits for it to finish."""
        if not self.core.copy_allowed(epoch_number):
            raise TimpyError(
                f"this copy was written under ring epoch {epoch_number}, older than {self.core.epoch.number}; "
                "its writer no longer owns the key", Code.UNAVAILABLE,
            )
        self._applying[epoch_number] = self._applying.get(epoch_number, 0) + 1
        try:
            yield
        finally:
            self._applying[epoch_number] -= 1
            if not self._applying[epoch_number]:
                del self._applying[epoch_number]
            self._drained.set()
            self._drained = trio.Event()

    async def fence(self, epoch: Epoch) -> None:
        """Accept ``epoch`` and wait until no copy from an older epoch is being stored.
        The fencer holds a lease under ``epoch`` (it catches up only then), so a majority accepted it."""
        self._learn(epoch, established=True)
        for _ in range(10_000):  # bounded: each pass waits for one copy to finish
            if not any(n < self.core.epoch.number for n in self._applying):
                return
            with trio.move_on_after(1.0):
                await self._drained.wait()
        raise TimpyError("copies from an older epoch are still being stored; retry", Code.UNAVAILABLE)

    # --- the shell ----------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._epoch_changed()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lease_loop, nursery)
            nursery.start_soon(self._propose_loop)
            task_status.started()

    def _learn(self, epoch: Epoch, established: bool) -> bool:
        """Take ``epoch`` if it is newer and known established (``Ownership.learn``);
        True when it is ours."""
        before = self.core.epoch
        accepted = self.core.learn(trio.current_time(), epoch, established)
        if self.core.epoch != before:
            self._epoch_changed()
        return accepted

    def _epoch_changed(self) -> None:
        e = self.core.epoch
        log.info("ring epoch %d: %d voters, %d ring members", e.number, len(e.voters), len(e.members))
        self._on_epoch(e)
        self._save()

    def address_of(self, name: str) -> str | None:
        m = self._membership()
        member = m.members.get(name) if m is not None else None
        if member is not None:
            return member.address
        return self.addresses.get(name)

    def note_addresses(self) -> None:
        """Membership changed: keep the voters' current addresses."""
        m = self._membership()
        if m is None:
            return
        for name in self.core.epoch.voters:
            member = m.members.get(name)
            if member is not None and member.address:
                self.addresses[name] = member.address
        self._save()

    def _save(self) -> None:
        if self._data_dir is None:
            return
        voters = self.core.epoch.voters
        addresses = {n: a for n, a in self.addresses.items() if n in voters}
        m = self._membership()
        for name in voters:
            member = m.members.get(name) if m is not None else None
            if member is not None and member.address:
                addresses[name] = member.address
        state = (self.core.epoch, addresses)
        if state != self._saved:
            save_members(self._data_dir, *state)
            self._saved = state
            self.addresses.update(addresses)

    # --- leases -------------------------------------------------------------

    async def _lease_loop(self, nursery: trio.Nursery) -> None:
        had = False
        while True:
            nursery.start_soon(self._lease_round)
            await trio.sleep(self.config.renew_interval)
            has = self.has_lease()
            if had and not has:
                self.lease_lost_at = trio.current_time()
                level = logging.INFO if self.core.ring_changing() else logging.WARNING  # a new ring is routine
                log.log(level, "this node lost its lease: %s", self.core.refusal())
            elif has and not had:
                log.info("this node holds a lease under ring epoch %d", self.core.epoch.number)
            had = has

    async def _found_if_alone(self) -> None:
        """A node with no epoch asks the members it sees alive for theirs. If for ``BOOTSTRAP_GRACE`` seconds every one of them has
        none either, the lowest id founds the cluster; the others join it. A
        node that sees nobody never serves as a cluster of one."""
        m = self._membership()
        others = sorted(n for n, mem in (m.members.items() if m is not None else ()) if n != self.self_id
                        and mem.state == State.ALIVE)
        now = trio.current_time()
        if not others:
            self._unfounded_since = self._alone_since = None
            return
        if self._alone_since is None:
            self._alone_since = now
        if now - self._alone_since < FOUND_AFTER:
            return  # an existing cluster adds a new node well within this: do not disturb it
        if self._ring_heard_at is not None and now - self._ring_heard_at < FOUND_AFTER:
            return  # a member has a ring: it adds this node in its own time (asking each round costs N² calls)
        answers: dict[str, int] = {}

        async def ask(name: str, address: str) -> None:
            try:
                answer = await self._rpc.call(address, ops.OWN_GRANT, ops.Grant(NO_EPOCH, self.self_id))
            except TimpyError:
                return
            answers[name] = answer.epoch.number  # only looked at: the cluster adds this node in its own time

        async with trio.open_nursery() as nursery:
            for name in others:
                address = self.address_of(name)
                if address:
                    nursery.start_soon(ask, name, address)
        now = trio.current_time()
        if any(answers.values()):
            self._ring_heard_at = now
        if self.core.epoch.number != 0 or len(answers) < len(others) or any(answers.values()):
            self._unfounded_since = None
            return
        if self._unfounded_since is None:
            self._unfounded_since = now
        if self.self_id < others[0] and now - self._unfounded_since >= BOOTSTRAP_GRACE:
            if self.core.bootstrap(now):
                log.info("no member has a ring yet: this node founds the cluster (ring epoch 1)")
                self._epoch_changed()

    async def _lease_round(self) -> None:
        now = trio.current_time()
        if self.core.epoch.number == 0:
            await self._found_if_alone()
            return
        rnd: LeaseRound = self.core.start_round(now)
        if self.self_id in rnd.epoch.voters:
            self.core.round_answer(now, rnd, self.self_id, self.core.grant(now, self.self_id, rnd.epoch, False))
        grant = ops.Grant(rnd.epoch, self.self_id, rnd.established)
        repaired = self.core.repaired.get(self.self_id, 0)
        if repaired and (repaired != self._repaired_told or now - self._repaired_told_at >= REPAIRED_RETELL):
            # One-way, so told again now and then: a lost notice only delays the history's trim.
            self._repaired_told, self._repaired_told_at = repaired, now
            for voter in sorted(rnd.epoch.voters - {self.self_id}):
                address = self.address_of(voter)
                if address:
                    self._rpc.notify(address, ops.OWN_REPAIRED, ops.Repaired(self.self_id, repaired))

        async def ask(voter: str, address: str) -> None:
            try:
                answer = await self._rpc.call(address, ops.OWN_GRANT, grant, timeout=self.config.holder_lease / 2)
            except TimpyError:
                return
            self._learn(answer.epoch, answer.established)
            self.core.round_answer(trio.current_time(), rnd, voter, answer.granted)

        async with trio.open_nursery() as nursery:
            for voter in sorted(rnd.epoch.voters - {self.self_id}):
                address = self.address_of(voter)
                if address:
                    nursery.start_soon(ask, voter, address)
        self.core.finish_round(trio.current_time(), rnd)

    def _answer(self, granted: bool) -> ops.Granted:
        return ops.Granted(granted, self.core.epoch, self.core.established_at is not None)

    def note_repaired(self, epoch_number: int) -> None:
        """This node finished a full repair pass under ``epoch_number``: its
        lease requests say so, and the proposer drops rings whose keys have
        all left them (``Ownership.next_epoch``)."""
        self.core.note_repaired(self.self_id, epoch_number)

    def _on_repaired(self, a: ops.Repaired) -> None:
        self.core.note_repaired(a.member, a.epoch)

    def _on_grant(self, a: ops.Grant) -> ops.Granted:
        self._learn(a.epoch, a.established)
        m = self._membership()
        dead = m is not None and m.state_of(a.holder) in (State.DEAD, State.LEFT)
        granted = self.core.grant(trio.current_time(), a.holder, a.epoch, dead, a.established)
        return self._answer(granted)

    # --- epochs -------------------------------------------------------------

    async def _propose_loop(self) -> None:
        while True:
            await trio.sleep(0.1)
            m = self._membership()
            if m is None:
                continue
            live = frozenset(
                n for n, mem in m.members.items() if mem.state in (State.ALIVE, State.SUSPECT)
            ) | {self.self_id}
            left = frozenset(n for n, mem in m.members.items() if mem.state == State.LEFT)
            alive = frozenset(n for n, mem in m.members.items() if mem.state == State.ALIVE) | {self.self_id}
            now = trio.current_time()
            held = self.core.history_full
            epoch = self.core.next_epoch(now, live, left, alive)
            if self.core.history_full and not held:
                log.warning(
                    "the ring is not changed for now: %d earlier rings may still hold messages that no repair pass "
                    "has copied to the current ring; it changes once every member finishes a repair pass "
                    "(or forget a member that is gone for good: timpy cluster forget)", len(self.core.epoch.rings),
                )
            if epoch is not None:
                await self._propose(epoch)

    async def _propose(self, epoch: Epoch) -> None:
        before = self.core.epoch
        proposal = self.core.propose(trio.current_time(), epoch)
        if self.core.epoch != before:
            self._epoch_changed()
        proposed = ops.EpochArgs(epoch)

        async def ask(voter: str, address: str) -> None:
            try:
                answer = await self._rpc.call(address, ops.OWN_ACCEPT, proposed)
            except TimpyError:
                return
            if answer.granted:
                proposal.accepted.add(voter)
                if self.core.proposal_passed(proposal):
                    nursery.cancel_scope.cancel()  # passed: no need to wait on the voters yet to answer
            else:
                self.core.conflict(answer.epoch)
                self._learn(answer.epoch, answer.established)

        async with trio.open_nursery() as nursery:
            for voter in sorted((epoch.voters | proposal.previous.voters) - {self.self_id}):
                address = self.address_of(voter)
                if address:
                    nursery.start_soon(ask, voter, address)
        if not self.core.proposal_passed(proposal):
            log.info("ring epoch %d was not accepted by a majority (%d answered yes)", epoch.number, len(proposal.accepted))
            return
        self.core.established(trio.current_time(), epoch)
        log.info("ring epoch %d accepted by a majority", epoch.number)
        for name in sorted((epoch.voters | epoch.members) - {self.self_id}):
            address = self.address_of(name)
            if address:
                self._rpc.notify(address, ops.OWN_ESTABLISHED, proposed)

    def _on_accept(self, a: ops.EpochArgs) -> ops.Granted:
        epoch = a.epoch
        m = self._membership()
        alive = {n for n, mem in (m.members.items() if m is not None else ()) if mem.state == State.ALIVE}
        alive.add(self.self_id)
        before = self.core.epoch
        accepted = self.core.accept_proposal(trio.current_time(), epoch, alive)
        if self.core.epoch != before:
            self._epoch_changed()
        missing = leaves_out_alive(epoch, alive)
        if not accepted and missing:
            log.info("refused ring epoch %d: it leaves out %s, seen alive here", epoch.number,
                     ", ".join(sorted(missing)))
        return self._answer(accepted)

    def _on_established(self, a: ops.EpochArgs) -> None:
        self._learn(a.epoch, established=True)

    async def _on_fence(self, a: ops.EpochArgs) -> Epoch:
        await self.fence(a.epoch)
        return self.core.epoch
