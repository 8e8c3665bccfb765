"""Who may write a key now: voting members, ring epochs accepted by a
majority, and ownership leases, as a sans-IO state machine.

Like ``membership.py`` it owns no socket and no clock: the trio shell
(``ownership_service.py``) passes the time in and carries the messages. The
safety argument is written in docs/consistency.md; in short:

* An **epoch** is a numbered ring: the voting members and the ring members
  (the nodes keys are placed on). An acceptor accepts a proposed epoch only if
  its number is higher than the one it holds, so at most one epoch carries each
  number. A proposal takes effect once a majority of the old voters and a
  majority of the new voters accepted it; the voters change by one member at a
  time.
* A **lease** lets a node number and acknowledge writes for the keys the ring
  of its epoch gives it. It needs grants from a majority of the epoch's
  voters (itself included). A grant promises, on the granter's clock, not to
  grant under any other epoch for ``lease_duration``; the holder counts its
  lease from the moment it *sent* the request and shortens it by the drift
  bound, so it expires (in real time) before any granter's promise does.
* A granter grants under a newer epoch only once every grant it gave under an
  older epoch has run out: the new owner waits out the old one. Any two
  majorities of the same voters share a member, so a lease under epoch e and
  a lease under a later epoch never overlap in time.

What a node whose lease ran out must not do (number, acknowledge) is enforced
by ``require_lease``; replicas refuse copies stamped with an older epoch than
they accepted (``check_copy``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OwnershipConfig:
    lease_duration: float = 2.0  # a grant's promise, on the granter's clock
    max_drift: float = 0.02  # clocks run at 1 +- max_drift of real time (2 %)
    renew_interval: float = 0.4  # a lease is renewed this often
    propose_interval: float = 1.0  # a proposal that did not pass is retried after this
    # Voters holding a higher epoch number than the established one for this
    # long are stuck on a proposal that never passed: the proposer moves them
    # past it with the same ring (``Ownership.next_epoch``).
    stuck_after: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_drift < 0.5:
            raise ValueError(f"max_drift must be in [0, 0.5), got {self.max_drift}")
        if self.lease_duration <= 0 or self.renew_interval <= 0 or self.renew_interval >= self.holder_lease:
            raise ValueError("the lease must be positive and longer than the renew interval")

    @property
    def holder_lease(self) -> float:
        """How long a holder may use a lease, from when it sent the request:
        short enough that it ends, in real time, before the granters' promises."""
        return self.lease_duration * (1 - self.max_drift) / (1 + self.max_drift)


def majority(voters: Iterable[str]) -> int:
    return len(frozenset(voters)) // 2 + 1


def has_majority(votes: Iterable[str], voters: Iterable[str]) -> bool:
    v = frozenset(voters)
    return bool(v) and len(frozenset(votes) & v) >= majority(v)


@dataclass(frozen=True)
class Epoch:
    """A numbered ring: who votes, and which nodes keys are placed on."""

    number: int
    voters: frozenset[str]
    members: frozenset[str]
    previous: frozenset[str] = frozenset()  # the ring members of the epoch this one replaced
    # The ring members of the epochs before ``previous``, newest first, back
    # to the last ring under which every key's data is known to have been
    # settled (docs/consistency.md, "Catch-up across several rings"): a
    # key untouched since then may still be only on its replicas there.
    earlier: tuple[frozenset[str], ...] = ()
    # Members of those rings an operator forgot (``timpy cluster forget``):
    # gone for good with their data, so catch-up does not wait for them and
    # they count as having finished their repair (what only they held is
    # given up). Kept while a ring of the history names them.
    gone: frozenset[str] = frozenset()

    @property
    def rings(self) -> tuple[frozenset[str], ...]:
        """The rings catch-up reads besides this one: ``previous``, then ``earlier``."""
        return ((self.previous,) if self.previous else ()) + self.earlier

    def pack(self) -> list:
        raw = [self.number, sorted(self.voters), sorted(self.members), sorted(self.previous)]
        if self.earlier or self.gone:  # without either, in the form nodes from before histories read
            raw.append([sorted(r) for r in self.earlier])
        if self.gone:
            raw.append(sorted(self.gone))
        return raw

    @classmethod
    def unpack(cls, raw: list) -> Epoch:
        number, voters, members, previous, *rest = raw  # saved before ``earlier`` or ``gone`` existed: none
        earlier = tuple(frozenset(map(str, r)) for r in rest[0]) if rest else ()
        gone = frozenset(map(str, rest[1])) if len(rest) > 1 else frozenset()
        return cls(
            int(number), frozenset(map(str, voters)), frozenset(map(str, members)), frozenset(map(str, previous)),
            earlier, gone,
        )


NO_EPOCH = Epoch(0, frozenset(), frozenset())


MAX_RINGS = 16  # rings an epoch carries besides its own before ring changes wait (docs/consistency.md, "Limits")


def carried_rings(
    current: Epoch, repaired: frozenset[str], settled: Callable[[frozenset[str], frozenset[str]], bool]
) -> tuple[frozenset[str], ...]:
    """The rings the epoch after ``current`` carries besides ``current``'s own
    members (which become its ``previous``): ``current.rings``, less each ring
    ``settled`` says every key of has left for the current ring (given the
    members ``repaired`` that finished a full repair pass under ``current``).
    None is dropped for any other reason: a key untouched since a ring that is
    not settled may still be only on its replicas there. ``next_epoch`` holds
    the ring instead when the history would grow past ``MAX_RINGS``."""
    return tuple(r for r in current.rings if r != current.members and not settled(r, repaired))


def leaves_out_alive(proposed: Epoch, alive: Iterable[str]) -> frozenset[str]:
    """Voters this acceptor sees alive that a proposed ring leaves out.

    A proposal is accepted only when it is newer; without this check a node
    with a stale view (the former minority of a split, right after the heal,
    still counting the other side dead) could win with a higher number a ring
    of itself alone, under which keys have fewer than W copies. An acceptor
    that sees such a voter alive refuses; the proposer tries again once its
    own view has caught up, and a majority that truly lost the member sees it
    dead too, so real failures still pass."""
    return (frozenset(alive) & proposed.voters) - proposed.members


def quorum_text(reached: int, voters: int) -> str:
    """What a refused client reads."""
    if voters == 0:
        return "this node has not joined a cluster yet (no member has accepted it); writes are refused until it has"
    return (
        f"this node reaches {reached} of {voters} cluster members; writes need {voters // 2 + 1}. "
        "Retry later or on another node"
    )


@dataclass
class LeaseRound:
    """One request for grants: counted from when it was sent."""

    epoch: Epoch
    sent_at: float
    established: bool = False  # the holder knows its epoch was accepted by a majority
    granted: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)


@dataclass
class Proposal:
    epoch: Epoch
    previous: Epoch
    accepted: set[str] = field(default_factory=set)


class Ownership:
    def __init__(self, self_id: str, config: OwnershipConfig, epoch: Epoch, now: float) -> None:
        self.self_id = self_id
        self.config = config
        self.epoch = epoch  # the highest epoch accepted
        self.established_at: float | None = now if epoch.voters == {self_id} else None
        # The last epoch known to be established: a proposal made while ours
        # is not (a re-proposal, or the next number past a conflict) must
        # still win a majority of *its* voters, or two one-member changes
        # from one base (a drops b, b drops a) could both pass.
        self._base = epoch
        self.lease_until = -1.0
        self.lease_epoch: Epoch | None = None
        self.reached = 1 if self_id in epoch.voters else 0
        self.forgotten: set[str] = set()
        # grants given: holder -> (epoch number, when the promise ends on our clock)
        self._grants: dict[str, tuple[int, float]] = {}
        self._next_propose = now
        self._conflict = False
        self._seen = epoch.number  # the highest epoch number heard of (ours to number past)
        self._stuck_since: float | None = None  # since when a number above our established epoch is heard of
        # member -> the epoch number under which it last finished a full
        # repair pass (its lease requests say so)
        self.repaired: dict[str, int] = {}
        # Whether every key's data left a ring for the current one, given the
        # members that finished a repair pass under it (the shell sets
        # ``Placement.settled``); by default a ring is never settled, and
        # never leaves the history.
        self.settled: Callable[[frozenset[str], frozenset[str]], bool] = lambda ring, repaired: False
        # The last proposal this node would have made was held: the history
        # would have grown past ``MAX_RINGS`` (``timpy cluster status`` says so).
        self.history_full = False

    # --- acceptor -----------------------------------------------------------

    def accept(self, now: float, epoch: Epoch) -> bool:
        """A proposed (or learned) epoch: accepted if newer than ours."""
        if epoch.number <= self.epoch.number:
            return epoch == self.epoch
        self._take(epoch)
        return True

    def _take(self, epoch: Epoch) -> None:
        self.epoch = epoch
        self.established_at = None
        self._stuck_since = None
        mine = self._grants.get(self.self_id)
        if mine is not None and mine[0] < epoch.number:
            del self._grants[self.self_id]  # our own lease under the old epoch ends here
        if self.lease_epoch is not None and self.lease_epoch != epoch:
            self.lease_until, self.lease_epoch = -1.0, None  # a lease is bound to its epoch

    def learn(self, now: float, epoch: Epoch, established: bool) -> bool:
        """An epoch heard of outside a proposal: in a lease request or its
        answer, a fence, the proposer's word. Adopted only when the sender
        knows a majority accepted it (``established``); otherwise only its
        number is noted, for this node's next proposal to number past it.

        Adopting an epoch merely proposed would skip the acceptor's check
        (``accept_proposal``): a node that heard a lone node's ring of one in
        a lease request held it as its ring, and then answered yes to the
        same ring proposed again, as to one it had accepted, so a ring of one
        member of five passed without any acceptor checking it (issue 15's
        chaos run, "ring epoch 8: 5 voters, 1 ring members"). True when
        ``epoch`` is (now) this node's."""
        self._note_seen(now, epoch.number)
        if not established:
            return epoch == self.epoch
        if epoch.number == self.epoch.number and epoch != self.epoch and self.established_at is None:
            # Ours is another proposal of the same number: it can never pass
            # (a majority accepted the other one, and an acceptor accepts one
            # epoch per number), so the established one replaces it.
            self._take(epoch)
        self.established(now, epoch)
        return epoch == self.epoch

    def accept_proposal(self, now: float, epoch: Epoch, alive: Iterable[str]) -> bool:
        """A proposal (``own.accept``), from a node that sees ``alive``
        (SWIM alive, this node included): accepted if newer than ours and it
        leaves out no voter seen alive here (``leaves_out_alive``). Our own
        epoch again is accepted without a second look only once it is known
        established; until then it is checked like any proposal."""
        if epoch == self.epoch and self.established_at is not None:
            return True
        self._note_seen(now, epoch.number)
        if leaves_out_alive(epoch, alive):
            return False
        return self.accept(now, epoch)

    def _note_seen(self, now: float, number: int) -> None:
        """An epoch number heard of: ours to number past, and, above an
        established epoch of ours, the sign of voters stuck on a proposal."""
        self._seen = max(self._seen, number)
        if self._seen > self.epoch.number and self.established_at is not None:
            if self._stuck_since is None:
                self._stuck_since = now
        else:
            self._stuck_since = None

    def _settle(self, now: float, epoch: Epoch) -> None:
        """``epoch`` (ours) is known to be established."""
        self.established_at, self._base = now, epoch
        self._stuck_since = now if self._seen > epoch.number else None
        # Names an operator forgot are done once an established epoch left
        # them out (not before: the proposal removing them counts on them).
        self.forgotten &= epoch.voters

    def established(self, now: float, epoch: Epoch) -> None:
        """A majority accepted ``epoch`` (told by its proposer)."""
        self.accept(now, epoch)
        if epoch == self.epoch and self.established_at is None:
            self._settle(now, epoch)

    def older_grants_until(self, now: float) -> float:
        """When the last promise given under an epoch older than ours ends (our clock)."""
        ends = [until for number, until in self._grants.values() if number < self.epoch.number and until > now]
        return max(ends, default=now)

    def note_repaired(self, member: str, epoch_number: int) -> None:
        """``member`` finished a full repair pass under ``epoch_number``."""
        if epoch_number > self.repaired.get(member, 0):
            self.repaired[member] = epoch_number

    def grant(self, now: float, holder: str, epoch: Epoch, holder_dead: bool, established: bool = False) -> bool:
        """Grant ``holder`` a lease under ``epoch``; the promise lasts
        ``lease_duration``. Only under an epoch known to be established (a
        majority of its old and of its new voters accepted it): the holder's
        word (``established``) counts, as every member runs this code."""
        for name, (_, until) in list(self._grants.items()):
            if until <= now:
                del self._grants[name]
        if established and epoch == self.epoch and self.established_at is None:
            self._settle(now, epoch)
        older = self._grants.get(holder)
        if older is not None and older[0] < epoch.number:
            # Asking under a newer epoch proves the holder accepted it, and
            # accepting drops its lease under the old one: the promise is void.
            del self._grants[holder]
        if epoch != self.epoch or holder_dead or holder not in epoch.voters or self.established_at is None:
            return False
        if self.older_grants_until(now) > now:
            return False  # a lease under an older epoch may still be in use
        self._grants[holder] = (epoch.number, now + self.config.lease_duration)
        return True

    # --- holder -------------------------------------------------------------

    def start_round(self, now: float) -> LeaseRound:
        return LeaseRound(self.epoch, now, self.established_at is not None)

    def round_answer(self, now: float, rnd: LeaseRound, voter: str, granted: bool) -> None:
        rnd.answered.add(voter)
        if granted:
            rnd.granted.add(voter)
            if rnd.epoch == self.epoch and self.established_at is None:
                # a granter grants only under an established epoch
                self._settle(now, rnd.epoch)
        self._count(rnd)

    def finish_round(self, now: float, rnd: LeaseRound) -> None:
        """The round is over (answers or timeouts): how many voters answered."""
        if rnd.epoch == self.epoch:
            self.reached = len(rnd.answered & rnd.epoch.voters)
            self._count(rnd)

    def _count(self, rnd: LeaseRound) -> None:
        """A majority of grants makes (or extends) the lease."""
        if rnd.epoch != self.epoch:
            return
        if has_majority(rnd.granted, rnd.epoch.voters):
            until = rnd.sent_at + self.config.holder_lease
            if self.lease_epoch != rnd.epoch or until > self.lease_until:
                self.lease_until, self.lease_epoch = until, rnd.epoch

    def has_lease(self, now: float) -> bool:
        return self.lease_epoch == self.epoch and now < self.lease_until

    def ring_changing(self) -> bool:
        """No lease, but a majority answers: a new epoch is on its way (wait, do not refuse yet)."""
        return bool(self.epoch.voters) and self.reached >= majority(self.epoch.voters)

    def refusal(self) -> str:
        voters = len(self.epoch.voters)
        if voters and self.reached >= majority(self.epoch.voters):
            return (
                f"the cluster is moving to a new ring (epoch {self.epoch.number}) after a node joined, left or "
                "failed; writes resume within a few seconds: retry"
            )
        return quorum_text(self.reached, voters)

    # --- replicas -----------------------------------------------------------

    def copy_allowed(self, epoch_number: int) -> bool:
        """A copy written under ``epoch_number``: refused once a newer epoch is accepted here."""
        return epoch_number >= self.epoch.number

    # --- proposer -----------------------------------------------------------

    def next_epoch(
        self, now: float, live: frozenset[str], left: frozenset[str], alive: frozenset[str] | None = None
    ) -> Epoch | None:
        """The epoch this node would propose, seeing ``live`` members (SWIM
        alive or suspect: they stay on the ring), ``alive`` ones (only those
        become voters; default ``live``) and ``left`` ones (graceful leave), or None.

        Voters change by one member at a time, and only once the current epoch
        has been established for longer than a lease: then every lease under
        an epoch before it has run out (docs/consistency.md)."""
        cur = self.epoch
        if now < self._next_propose:
            return None
        self.history_full = False  # set again below while a change waits on the history
        if self.self_id not in cur.voters:
            return None
        live_voters = live & cur.voters
        if self.self_id != min(live_voters | {self.self_id}) and not self.forgotten:
            return None  # the lowest live voter proposes; others wait (an operator's forget is carried out here)
        if self.established_at is None:
            # Not known to be accepted by a majority (an answer was lost,
            # another proposal took this number, or acceptors refused a ring
            # that left out members they see alive): confirm it again, or
            # move past it with the next number and the ring as seen now.
            fresh = frozenset(live & cur.voters) | {self.self_id}
            if self._conflict or fresh != cur.members or self._seen > cur.number:
                return Epoch(max(cur.number, self._seen) + 1, cur.voters, fresh, cur.previous, cur.earlier, cur.gone)
            return cur
        voters = cur.voters
        settled = self.established_at is not None and now - self.established_at >= self.config.lease_duration * (
            1 + self.config.max_drift
        ) / (1 - self.config.max_drift)
        if settled:
            gone = sorted((left | self.forgotten) & voters - {self.self_id})
            newcomers = sorted((live if alive is None else alive) - voters)
            if gone:
                voters = voters - {gone[0]}
            elif newcomers:
                voters = voters | {newcomers[0]}
        members = frozenset(live & voters) | {self.self_id}
        if voters == cur.voters and members == cur.members:
            if self._stuck_since is not None and now - self._stuck_since >= self.config.stuck_after:
                # Voters hold a higher number than ours that never passed (a
                # proposal of another proposer, or ours before a restart):
                # they refuse our grants and hold no lease under theirs. The
                # same ring again, under a number past theirs, brings them back.
                return self._successor(voters, members)
            # No new epoch only to drop settled rings from the history: each
            # epoch revokes every lease, and the ring is the same. They are
            # dropped with the next change of the ring.
            return None
        nxt = self._successor(voters, members)
        if len(nxt.rings) > MAX_RINGS and not self.forgotten:
            # Dropping a ring that is not settled could lose an acknowledged
            # message of a key untouched since (docs/consistency.md,
            # "Limits"). The ring stays as it is until repair passes settle
            # one: keys whose owner is gone answer UNAVAILABLE meanwhile. An
            # operator's forget goes through, carrying every ring.
            self.history_full = True
            return None
        return nxt

    def _successor(self, voters: frozenset[str], members: frozenset[str]) -> Epoch:
        """The epoch after ours with these voters and ring members: its
        history is ours less the rings every key has left
        (``carried_rings``, given who finished a repair pass under ours),
        with our ring as its ``previous`` when keys move."""
        cur = self.epoch
        # Voters an operator forgot leave with this epoch: gone for good, they
        # count as repaired (nothing more will come from them).
        gone = cur.gone | (self.forgotten & (cur.voters - voters))
        repaired = frozenset(n for n, e in self.repaired.items() if e >= cur.number) | gone
        kept = carried_rings(cur, repaired, self.settled)
        if members == cur.members:  # the same ring past a stuck number: no key moves, no ring is added
            previous, earlier = (kept[0], kept[1:]) if kept else (frozenset(), ())
        else:
            previous, earlier = cur.members, kept
        named = frozenset(previous).union(*earlier)
        return Epoch(
            max(cur.number, self._seen) + 1, frozenset(voters), frozenset(members), previous, earlier, gone & named
        )

    def conflict(self, theirs: Epoch) -> None:
        """An acceptor refused our proposal holding ``theirs``."""
        self._seen = max(self._seen, theirs.number)
        if theirs.number >= self.epoch.number and theirs != self.epoch:
            self._conflict = True

    def propose(self, now: float, epoch: Epoch) -> Proposal:
        self._next_propose = now + self.config.propose_interval
        self._conflict = False
        previous = self.epoch if self.established_at is not None else self._base
        proposal = Proposal(epoch, previous)
        if self.accept(now, epoch):
            proposal.accepted.add(self.self_id)
        return proposal

    def proposal_passed(self, p: Proposal) -> bool:
        """Accepted by a majority of the old voters and of the new ones (a
        first epoch, from no voters, needs only the new). Members an operator
        forgot count as accepting among the old voters: the operator vouches
        they are gone for good (so a 2-node cluster can shrink to one)."""
        old_yes = p.accepted | (self.forgotten & p.previous.voters - p.epoch.voters)
        old_ok = not p.previous.voters or has_majority(old_yes, p.previous.voters)
        return old_ok and has_majority(p.accepted, p.epoch.voters)

    def bootstrap(self, now: float) -> bool:
        """Found a cluster: this node, with no epoch, becomes the first voter.
        The shell calls it only when every member it sees alive has no epoch
        either and this node's id is the lowest (nodes all started with
        ``--join`` to one another)."""
        if self.epoch.number != 0:
            return False
        self.epoch = Epoch(1, frozenset({self.self_id}), frozenset({self.self_id}))
        self._settle(now, self.epoch)
        self.reached = 1
        return True

    def forget(self, name: str) -> None:
        """An operator removes a member that is gone for good."""
        if name in self.epoch.voters:
            self.forgotten.add(name)
