"""The ownership core (``timpy.cluster.ownership``) without a network: leases
from a majority, epochs accepted by a majority, waiting out older grants,
fencing of stale copies; and a stateful test in which messages arrive late,
in any order, or never, and every node's clock runs at its own rate within
the drift bound, checking that two leases under different epochs are never
both valid at the same moment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from timpy.cluster.ownership import (
    MAX_RINGS,
    Epoch,
    Ownership,
    OwnershipConfig,
    has_majority,
    leaves_out_alive,
    majority,
    quorum_text,
)

CFG = OwnershipConfig(lease_duration=2.0, max_drift=0.02, renew_interval=0.4)
FIVE = frozenset("abcde")


def epoch(number: int, voters: str = "abcde", members: str | None = None) -> Epoch:
    return Epoch(number, frozenset(voters), frozenset(members if members is not None else voters))


def node(name: str, e: Epoch, now: float = 0.0) -> Ownership:
    return Ownership(name, CFG, e, now)


def test_a_lease_needs_grants_from_a_majority_and_counts_from_when_it_was_asked():
    e = epoch(3)
    a = node("a", e)
    a.established(0.0, e)
    rnd = a.start_round(10.0)
    for voter in "ab":
        a.round_answer(10.1, rnd, voter, True)
    assert not a.has_lease(10.2)
    a.round_answer(10.3, rnd, "c", True)
    assert a.has_lease(10.3)
    assert a.lease_until == pytest.approx(10.0 + CFG.holder_lease)
    assert CFG.holder_lease < CFG.lease_duration / (1 + CFG.max_drift)
    assert not a.has_lease(10.0 + CFG.holder_lease)


def test_a_minority_is_refused_with_words_a_user_understands():
    a = node("a", epoch(3))
    rnd = a.start_round(0.0)
    a.round_answer(0.1, rnd, "a", True)
    a.round_answer(0.1, rnd, "b", True)
    a.finish_round(0.5, rnd)
    assert not a.has_lease(0.5)
    assert a.refusal().startswith("this node reaches 2 of 5 cluster members; writes need 3")
    assert "not joined" in quorum_text(0, 0)


def test_grants_only_under_the_granters_epoch_to_live_voters():
    e = epoch(4)
    b = node("b", e)
    assert not b.grant(0.0, "a", e, holder_dead=False)  # not known to be accepted by a majority
    b.established(0.0, e)
    assert not b.grant(0.0, "a", epoch(3), holder_dead=False)  # stale epoch
    assert not b.grant(0.0, "a", e, holder_dead=True)  # declared dead here
    assert not b.grant(0.0, "z", e, holder_dead=False)  # not a voter
    assert b.grant(0.0, "a", e, holder_dead=False)
    c = node("c", e)
    assert c.grant(0.0, "a", e, holder_dead=False, established=True)  # the holder's word teaches it


def test_a_new_epoch_is_granted_only_once_older_grants_ran_out():
    b = node("b", epoch(4))
    assert b.grant(0.0, "a", epoch(4), False, established=True)
    e5 = epoch(5, members="bcde")
    assert b.accept(0.5, e5)
    assert not b.grant(0.6, "c", e5, False, established=True)  # a's lease under 4 may still be in use
    assert b.older_grants_until(0.6) == pytest.approx(CFG.lease_duration)
    assert b.grant(CFG.lease_duration, "c", e5, False, established=True)


def test_one_epoch_per_number_and_never_backwards():
    b = node("b", epoch(4))
    assert b.accept(0.0, epoch(5, members="abc"))
    assert not b.accept(0.0, epoch(5, members="abd"))  # same number, other ring
    assert b.accept(0.0, epoch(5, members="abc"))  # the same one again is fine
    assert not b.accept(0.0, epoch(4))
    assert b.epoch == epoch(5, members="abc")


def test_accepting_a_newer_epoch_drops_the_lease_of_the_old_one():
    a = node("a", epoch(1, "abc"))
    rnd = a.start_round(0.0)
    for v in "ab":
        a.round_answer(0.0, rnd, v, True)
    assert a.has_lease(0.1)
    a.accept(0.2, epoch(2, "abc", "ab"))
    assert not a.has_lease(0.2)


def test_replicas_refuse_copies_from_an_older_epoch():
    b = node("b", epoch(7))
    assert b.copy_allowed(7) and b.copy_allowed(8)
    assert not b.copy_allowed(6)


def test_a_proposal_needs_a_majority_of_old_and_new_voters():
    a = node("a", epoch(1, "abc"))
    p = a.propose(0.0, epoch(2, "abcd"))
    p.accepted |= {"b"}
    assert not a.proposal_passed(p)  # 2 of 3 old, but 2 of 4 new
    p.accepted |= {"d"}
    assert a.proposal_passed(p)
    a4 = node("a", epoch(1, "abcd"))
    p = a4.propose(0.0, epoch(2, "abcde"))
    p.accepted |= {"d", "e"}
    assert not a4.proposal_passed(p)  # 3 of 5 new, but only 2 of 4 old


def test_voters_change_one_at_a_time_and_only_once_the_epoch_is_settled():
    a = Ownership("a", CFG, epoch(1, "a"), 0.0)  # a new cluster's first member: established at once
    live = frozenset("abc")
    assert a.next_epoch(0.5, live, frozenset()) is None  # not settled for a lease yet
    later = 3.0
    nxt = a.next_epoch(later, live, frozenset())
    assert nxt == Epoch(2, frozenset("ab"), frozenset("ab"), frozenset("a"))
    b = Ownership("b", CFG, epoch(1, "ab"), 0.0)
    assert b.next_epoch(later, frozenset("ab"), frozenset()) is None  # a, the lowest live voter, proposes


def test_an_acceptor_refuses_a_ring_that_leaves_out_voters_it_sees_alive():
    """The former minority of a split, right after the heal, still counts the
    other side dead: its ring of itself must not win by a higher number."""
    stale = Epoch(9, FIVE, frozenset("ab"), FIVE)
    assert leaves_out_alive(stale, "abcde") == frozenset("cde")
    assert leaves_out_alive(stale, "ab") == frozenset()  # an acceptor that also sees c, d, e dead
    assert leaves_out_alive(stale, "abx") == frozenset()  # non-voters are not ring members anyway
    assert leaves_out_alive(epoch(9), "abcde") == frozenset()


def test_a_refused_proposal_is_made_again_with_the_ring_as_seen_now():
    a = Ownership("a", CFG, epoch(3, "abcde", "abcde"), 0.0)
    a.established(0.0, a.epoch)
    stale = a.next_epoch(10.0, frozenset("ab"), frozenset())  # the split: c, d, e look dead
    assert stale is not None and stale.members == frozenset("ab")
    a.propose(10.0, stale)  # refused by c, d, e (they see themselves alive): not established
    assert a.next_epoch(20.0, frozenset("ab"), frozenset()) == stale  # same view: asked again
    healed = a.next_epoch(30.0, FIVE, frozenset())  # the view caught up after the heal
    assert healed is not None and healed.number == stale.number + 1 and healed.members == FIVE


def test_a_proposal_made_again_still_needs_the_voters_of_the_last_established_epoch():
    """Found by the Leases state machine: a and b each propose dropping the
    other; proposing its own unestablished epoch again, a took that epoch as
    the one before it and passed with its own vote alone, and so did b."""
    a, b = node("a", epoch(1, "ab")), node("b", epoch(1, "ab"))
    a.established(0.0, a.epoch)
    b.established(0.0, b.epoch)
    drop_a = b.next_epoch(3.0, frozenset("b"), frozenset("a"))
    drop_b = a.next_epoch(3.0, frozenset("a"), frozenset("b"))
    assert drop_a is not None and drop_b is not None and drop_a.number == drop_b.number == 2
    b.propose(3.0, drop_a)
    a.propose(3.0, drop_b)
    again = a.next_epoch(4.0, frozenset("a"), frozenset())
    assert again == drop_b
    p = a.propose(4.0, again)
    assert p.previous.voters == frozenset("ab")
    assert not a.proposal_passed(p)  # a alone is not a majority of {a, b}


def test_a_ring_of_one_heard_in_lease_requests_is_never_taken_nor_passed():
    """Issue 15's chaos run, 29 s after a heal: the nodes learned rings of 3, 1
    and 2 of 5 members that no majority had accepted ("ring epoch 8: 5 voters,
    1 ring members"), and a send was answered NO_SUCH_USER by a ring of one.
    The path, message by message: e, cut off and still counting the others
    dead after the heal, is refused, numbers past the conflict, and asks for
    its lease under its ring of one; the others took that ring from the lease
    request (so routed every key to e) and then answered yes to e's next
    proposal of it, as to an epoch they held: a ring of one passed."""
    five = {n: node(n, epoch(5)) for n in "abcde"}
    for o in five.values():
        o.established(0.0, o.epoch)
    a, e = five["a"], five["e"]
    # The split: a, b, c, d see e dead and move it off the ring; e sees them dead.
    four = a.next_epoch(10.0, frozenset("abcd"), frozenset())
    assert four is not None and four.members == frozenset("abcd")
    p = a.propose(10.0, four)
    for n in "bcd":
        if five[n].accept_proposal(10.0, four, "abcd"):
            p.accepted.add(n)
    assert a.proposal_passed(p)
    for n in "abcd":
        five[n].learn(10.1, four, established=True)
    alone = e.next_epoch(10.0, frozenset("e"), frozenset())
    assert alone is not None and alone.members == frozenset("e")
    e.propose(10.0, alone)  # nobody hears it
    # The heal: e's view lags (the others still dead), the network works.
    now = 20.0
    for _ in range(4):
        mine = e.next_epoch(now, frozenset("e"), frozenset())
        if mine is not None:
            p = e.propose(now, mine)
            for n in "abcd":
                o = five[n]
                if o.accept_proposal(now, mine, "abcde"):
                    p.accepted.add(n)
                else:
                    e.conflict(o.epoch)
                    e.learn(now, o.epoch, o.established_at is not None)
            if e.proposal_passed(p):
                e.established(now, mine)
                for n in "abcd":
                    five[n].learn(now, mine, established=True)
        rnd = e.start_round(now)
        for n in "abcd":  # e asks every voter for its lease, under its ring
            o = five[n]
            o.learn(now, rnd.epoch, rnd.established)
            e.round_answer(now, rnd, n, o.grant(now, "e", rnd.epoch, False, rnd.established))
        now += CFG.propose_interval + 0.1
    assert e.epoch.number > four.number and e.epoch.members == frozenset("e")  # e tried, numbering past 6
    for o in five.values():
        if o.established_at is not None:  # no ring without a majority of its voters passed anywhere
            assert len(o.epoch.members) >= majority(o.epoch.voters), (o.self_id, o.epoch)
    for n in "abcd":
        assert five[n].epoch == four, n  # nobody took e's ring for its own
    assert not e.has_lease(now)
    # Once the others see e alive, a (the lowest live voter) proposes a ring
    # with everyone, numbered past every number it heard, which e accepts.
    healed = a.next_epoch(now, FIVE, frozenset())
    assert healed is not None and healed.members == FIVE and healed.number == e.epoch.number + 1
    assert e.accept_proposal(now, healed, "e")


def test_an_established_epoch_replaces_another_proposal_of_its_number():
    b = node("b", epoch(5))
    b.established(0.0, b.epoch)
    assert b.accept_proposal(1.0, epoch(6, members="ab"), "ab")  # proposed, never passed
    winner = epoch(6, members="abcd")
    assert not b.accept_proposal(1.5, winner, "abcd")  # one epoch per number, as an acceptor
    assert b.learn(2.0, winner, established=False) is False  # heard of: noted, not taken
    assert b.epoch == epoch(6, members="ab")
    assert b.learn(2.0, winner, established=True)  # a majority took it: ours can never pass
    assert b.epoch == winner and b.established_at == 2.0


def test_a_dead_member_leaves_the_ring_but_still_votes():
    a = Ownership("a", CFG, epoch(3, "abc"), 0.0)
    a.established(0.0, a.epoch)
    nxt = a.next_epoch(10.0, frozenset("ab"), frozenset())
    assert nxt is not None and nxt.voters == frozenset("abc") and nxt.members == frozenset("ab")
    a.forget("c")
    nxt = a.next_epoch(10.0, frozenset("ab"), frozenset())
    assert nxt is not None and nxt.voters == frozenset("ab")


def test_a_new_owner_waits_out_the_old_owners_lease_under_the_worst_drift():
    """a holds a lease under epoch 1 and is then cut off; b and c move to
    epoch 2 without it. c's lease under epoch 2 starts only after a's has
    ended, even with a's clock slow and the others fast by the full bound."""
    rho = CFG.max_drift
    rates = {"a": 1 - rho, "b": 1 + rho, "c": 1 + rho}
    e1 = epoch(1, "abc")
    nodes = {n: Ownership(n, CFG, e1, 0.0) for n in "abc"}
    for n in nodes.values():
        n.established(0.0, e1)

    def now(name: str, t: float) -> float:
        return rates[name] * t

    rnd = nodes["a"].start_round(now("a", 0.0))
    nodes["a"].round_answer(0.0, rnd, "a", nodes["a"].grant(0.0, "a", e1, False))
    nodes["a"].round_answer(0.0, rnd, "b", nodes["b"].grant(0.0, "a", e1, False))
    assert nodes["a"].has_lease(0.0)
    e2 = epoch(2, "abc", "bc")
    p = nodes["b"].propose(now("b", 0.1), e2)
    p.accepted.add("c") if nodes["c"].accept(now("c", 0.1), e2) else None
    assert nodes["b"].proposal_passed(p)
    nodes["b"].established(now("b", 0.1), e2)
    # c asks b for a grant at every instant (1 ms apart) until it holds a lease.
    t = 0.1
    for _ in range(5000):
        t += 0.001
        r = nodes["c"].start_round(now("c", t))
        nodes["c"].round_answer(now("c", t), r, "c", nodes["c"].grant(now("c", t), "c", e2, False, True))
        nodes["c"].round_answer(now("c", t), r, "b", nodes["b"].grant(now("b", t), "c", e2, False, True))
        if nodes["c"].has_lease(now("c", t)):
            break
    assert nodes["c"].has_lease(now("c", t))
    assert not nodes["a"].has_lease(now("a", t)), f"a's lease under epoch 1 still runs at t={t:.3f}"


@given(st.sets(st.sampled_from("abcdefghij"), min_size=1), st.data())
def test_any_two_majorities_of_the_same_voters_share_a_member(voters, data):
    pool = st.sampled_from(sorted(voters))
    q1 = data.draw(st.sets(pool, min_size=majority(voters)))
    q2 = data.draw(st.sets(pool, min_size=majority(voters)))
    assert has_majority(q1, voters) and has_majority(q2, voters)
    assert q1 & q2


@given(st.sets(st.sampled_from("abcdefghij"), min_size=2), st.sampled_from("abcdefghijk"), st.data())
def test_majorities_across_a_one_member_change_share_a_member(voters, other, data):
    changed = voters ^ {other}
    q1 = data.draw(st.sets(st.sampled_from(sorted(voters)), min_size=majority(voters)))
    q2 = data.draw(st.sets(st.sampled_from(sorted(changed)), min_size=majority(changed)))
    assert q1 & q2


# --- many nodes, late messages, drifting clocks -------------------------------

NAMES = "abcde"


class Leases(RuleBasedStateMachine):
    """Real time moves on; each node reads its own clock (offset and a rate
    within the drift bound). Requests and answers are delivered late, in any
    order, or never. Invariant: at no moment do two nodes hold leases under
    different epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.rates: dict[str, float] = {}
        self.offsets: dict[str, float] = {}
        self.nodes: dict[str, Ownership] = {}
        self.rounds: list[tuple[str, object]] = []
        self.grant_answers: list[tuple[int, str, bool]] = []
        self.proposals: list[tuple[str, object]] = []
        self.accept_answers: list[tuple[int, str, bool]] = []
        self.accepted_by: dict[Epoch, set[str]] = {}
        self.passed: dict[int, set[Epoch]] = {}

    def accept(self, name: str, e: Epoch, alive: frozenset[str]) -> bool:
        ok = self.nodes[name].accept_proposal(self.now(name), e, alive | {name})
        if ok:
            self.accepted_by.setdefault(e, set()).add(name)
        return ok

    @rule(
        size=st.integers(1, 5),
        rates=st.lists(st.floats(1 - CFG.max_drift, 1 + CFG.max_drift), min_size=5, max_size=5),
        offsets=st.lists(st.floats(-100, 100), min_size=5, max_size=5),
        formed=st.booleans(),
    )
    @precondition(lambda self: not self.nodes)
    def start(self, size, rates, offsets, formed):
        first = NAMES[0]
        for i, name in enumerate(NAMES):
            self.rates[name], self.offsets[name] = rates[i], offsets[i]
        everyone = frozenset(NAMES[:size])
        for name in NAMES[:size]:
            if formed:  # a cluster that has run for a while: every node votes, epoch 1 established
                e = Epoch(1, everyone, everyone)
            elif name == first:  # a new cluster's first node; the others join
                e = Epoch(1, frozenset({first}), frozenset({first}))
            else:
                e = Epoch(0, frozenset(), frozenset())
            self.nodes[name] = Ownership(name, CFG, e, self.now(name))
            if formed:
                self.nodes[name].established(self.now(name), e)

    def now(self, name: str) -> float:
        return self.offsets[name] + self.rates[name] * self.t

    @rule(dt=st.floats(0.001, 1.5))
    def advance(self, dt):
        self.t += dt

    @precondition(lambda self: self.nodes)
    @rule(data=st.data(), reach=st.sets(st.sampled_from(NAMES)), answers_now=st.booleans())
    def ask_for_a_lease(self, data, reach, answers_now):
        """A lease round; the requests reach ``reach`` now (more may arrive later)."""
        who = data.draw(st.sampled_from(sorted(self.nodes)))
        n = self.nodes[who]
        rnd = n.start_round(self.now(who))
        self.rounds.append((who, rnd))
        if who in rnd.epoch.voters:
            n.round_answer(self.now(who), rnd, who, n.grant(self.now(who), who, rnd.epoch, False))
        for granter in sorted(reach):
            self._grant_request(len(self.rounds) - 1, granter, False)
        if answers_now:
            while self.grant_answers:
                self._grant_answer(0)

    def _grant_request(self, i, granter, dead):
        holder, rnd = self.rounds[i]
        if granter in self.nodes and granter != holder:
            self.nodes[granter].learn(self.now(granter), rnd.epoch, rnd.established)  # taken if established
            g = self.nodes[granter]
            self.grant_answers.append((i, granter, g.grant(self.now(granter), holder, rnd.epoch, dead, rnd.established)))

    def _grant_answer(self, j):
        i, granter, granted = self.grant_answers.pop(j)
        holder, rnd = self.rounds[i]
        self.nodes[holder].round_answer(self.now(holder), rnd, granter, granted)

    @precondition(lambda self: self.rounds)
    @rule(data=st.data(), granter=st.sampled_from(NAMES), dead=st.booleans())
    def deliver_a_late_grant_request(self, data, granter, dead):
        self._grant_request(data.draw(st.integers(0, len(self.rounds) - 1)), granter, dead)

    @precondition(lambda self: self.grant_answers)
    @rule(data=st.data())
    def deliver_a_grant_answer(self, data):
        self._grant_answer(data.draw(st.integers(0, len(self.grant_answers) - 1)))

    @precondition(lambda self: self.nodes)
    @rule(
        data=st.data(), live=st.sets(st.sampled_from(NAMES)), left=st.sets(st.sampled_from(NAMES)),
        reach=st.sets(st.sampled_from(NAMES)), answers_now=st.booleans(),
    )
    def propose(self, data, live, left, reach, answers_now):
        """A node proposes the epoch its view calls for; the proposal reaches ``reach`` now."""
        who = data.draw(st.sampled_from(sorted(self.nodes)))
        n = self.nodes[who]
        live = frozenset(live & set(self.nodes)) | {who}
        nxt = n.next_epoch(self.now(who), live, frozenset(left) - {who})
        if nxt is None:
            return
        self.proposals.append((who, n.propose(self.now(who), nxt)))
        if n.epoch == nxt:
            self.accepted_by.setdefault(nxt, set()).add(who)
        for acceptor in sorted(reach):
            self._proposal(len(self.proposals) - 1, acceptor, data.draw(st.sets(st.sampled_from(NAMES))))
        if answers_now:
            while self.accept_answers:
                self._accept_answer(0)

    def _proposal(self, i, acceptor, alive=frozenset()):
        who, p = self.proposals[i]
        if acceptor in self.nodes and acceptor != who:
            self.accept_answers.append((i, acceptor, self.accept(acceptor, p.epoch, frozenset(alive))))

    def _accept_answer(self, j):
        i, acceptor, ok = self.accept_answers.pop(j)
        who, p = self.proposals[i]
        if ok:
            p.accepted.add(acceptor)
        n = self.nodes[who]
        if n.proposal_passed(p):
            self.passed.setdefault(p.epoch.number, set()).add(p.epoch)
            n.established(self.now(who), p.epoch)
            for other in self.nodes.values():  # the notice reaches those at that epoch
                if other.epoch == p.epoch:
                    other.established(self.now(other.self_id), p.epoch)

    @precondition(lambda self: self.proposals)
    @rule(data=st.data(), acceptor=st.sampled_from(NAMES))
    def deliver_a_late_proposal(self, data, acceptor):
        alive = data.draw(st.sets(st.sampled_from(NAMES)))  # the acceptor's view then
        self._proposal(data.draw(st.integers(0, len(self.proposals) - 1)), acceptor, alive)

    @precondition(lambda self: self.accept_answers)
    @rule(data=st.data())
    def deliver_an_accept_answer(self, data):
        self._accept_answer(data.draw(st.integers(0, len(self.accept_answers) - 1)))

    @invariant()
    def leases_of_different_epochs_never_overlap(self):
        held = {n.lease_epoch for name, n in self.nodes.items() if n.has_lease(self.now(name))}
        assert len(held) <= 1, held

    @invariant()
    def at_most_one_ring_per_epoch_number_passes(self):
        assert all(len(v) == 1 for v in self.passed.values()), self.passed

    @invariant()
    def a_ring_that_passed_holds_a_majority_of_its_voters(self):
        # every acceptor is on the ring it accepts (it sees itself alive), and
        # no node takes a ring it merely heard of: issue 15's ring of one
        for e in set().union(*self.passed.values()) if self.passed else ():
            assert has_majority(e.members, e.voters), e
        for n in self.nodes.values():
            if n.established_at is not None and n.epoch.voters:
                assert has_majority(n.epoch.members, n.epoch.voters), (n.self_id, n.epoch)


Leases.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
TestLeases = Leases.TestCase


def test_each_ring_change_carries_the_rings_before_it_until_their_keys_left_them():
    """A ring stays in the epochs' history (catch-up reads it) until the
    members that finished a repair pass under the current ring say, through
    ``settled``, that every key of it has left it; older epochs saved without
    a history read as having none."""
    seven = "abcdefg"
    a = Ownership("a", CFG, epoch(3, seven), 0.0)
    a.established(0.0, a.epoch)
    e4 = a.next_epoch(10.0, frozenset("abcdef"), frozenset())
    assert e4 is not None and e4.previous == frozenset(seven) and e4.earlier == ()
    a.established(10.0, e4)
    e5 = a.next_epoch(20.0, frozenset("abcde"), frozenset())
    assert e5 is not None and e5.rings == (frozenset("abcdef"), frozenset(seven))
    assert Epoch.unpack(e5.pack()) == e5
    assert Epoch.unpack(e5.pack()[:4]).earlier == ()  # saved before histories existed

    asked: list[tuple[frozenset[str], frozenset[str]]] = []

    def settled(ring: frozenset[str], repaired: frozenset[str]) -> bool:
        asked.append((ring, repaired))
        return ring == frozenset(seven) and repaired >= frozenset("abcde")

    a.settled = settled
    a.established(20.0, e5)
    for m in "abcd":
        a.note_repaired(m, e5.number)
    a.note_repaired("e", e5.number - 1)  # a pass under an older epoch does not count
    e6 = a.next_epoch(30.0, frozenset("abcd"), frozenset())
    assert e6 is not None and e6.rings == (frozenset("abcde"), frozenset("abcdef"), frozenset(seven))
    assert asked[-1][1] == frozenset("abcd")
    a.established(30.0, e6)
    for m in "abcde":
        a.note_repaired(m, e6.number)
    a.forget("e")  # a change of the voters only, with every member repaired
    e7 = a.next_epoch(40.0, frozenset("abcd"), frozenset())
    # The ring stays abcd: no key moves, so it adds no ring to the history.
    assert e7 is not None and e7.members == frozenset("abcd")
    assert e7.rings == (frozenset("abcde"), frozenset("abcdef"))


def test_settled_rings_leave_the_history_only_with_the_next_change_of_the_ring():
    """An epoch revokes every lease: none is made only to drop settled rings
    (in a full CI run such epochs refused writes in steady state). The next
    real change of the ring drops them."""
    a = Ownership("a", CFG, Epoch(5, frozenset("abcde"), frozenset("abcd"), frozenset("abcde"), (frozenset("abcdef"),)), 0.0)
    a.established(0.0, a.epoch)
    a.settled = lambda ring, repaired: repaired >= frozenset("abcd")
    for m in "abcd":
        a.note_repaired(m, 5)
    assert a.next_epoch(10.0, frozenset("abcd"), frozenset()) is None  # the same ring: no epoch for the history alone
    e6 = a.next_epoch(10.0, frozenset("abcde"), frozenset())  # e is back: a real change
    assert e6 is not None and e6.members == frozenset("abcde") and e6.rings == (frozenset("abcd"),)


def test_a_ring_change_that_would_drop_a_ring_not_yet_settled_waits_for_repair():
    """Issue 15: the history once dropped its oldest ring past ``MAX_RINGS``,
    settled or not, and a key untouched since lost its acknowledged messages.
    Now the ring is held (its keys answer UNAVAILABLE where their owner is
    gone) until repair settles a ring; the same ring past a stuck number adds
    none; an operator's forget goes through carrying every ring."""
    names = [f"n{i:02}" for i in range(MAX_RINGS + 3)]
    history = tuple(frozenset(names[: len(names) - i]) for i in range(MAX_RINGS))  # 19 down to 4 members
    ring = frozenset(names[:3])
    full = Epoch(40, ring, ring, history[0], history[1:])
    assert len(full.rings) == MAX_RINGS
    a = Ownership("n00", CFG, full, 0.0)
    a.established(0.0, full)
    smaller = ring - {"n02"}
    assert a.next_epoch(10.0, smaller, frozenset()) is None and a.history_full
    # Voters stuck on a number above ours: the same ring past it, with the same history.
    a.learn(10.0, Epoch(42, ring, smaller, ring), established=False)
    same = a.next_epoch(10.0 + CFG.stuck_after + 1, ring, frozenset())
    assert same is not None and same.members == ring and same.rings == full.rings and not a.history_full
    a.propose(20.0, same)
    a.established(20.0, same)
    # Every member finished a pass: the oldest ring is settled, and the change goes.
    oldest = history[-1]
    a.settled = lambda r, repaired: r == oldest and repaired >= ring
    for m in ring:
        a.note_repaired(m, same.number)
    e = a.next_epoch(30.0, smaller, frozenset())
    assert e is not None and not a.history_full
    assert e.rings == (ring, *history[:-1]) and len(e.rings) == MAX_RINGS
    # Full again and nothing settles; a dead member the operator forgets leaves anyway.
    b = Ownership("n00", CFG, full, 0.0)
    b.established(0.0, full)
    assert b.next_epoch(10.0, smaller, frozenset()) is None
    b.forget("n02")
    e = b.next_epoch(10.0, smaller, frozenset())
    assert e is not None and e.voters == smaller and e.rings == (ring, *history)


def test_a_forgotten_member_is_gone_while_a_ring_of_the_history_names_it_and_counts_as_repaired():
    """``timpy cluster forget``: the member leaves the voters with the next
    epoch, which names it in ``gone`` while a ring of its history holds it;
    it counts as having finished a repair pass (nothing more will come from
    it), so a ring whose other holders repaired settles and leaves."""
    seven, six = frozenset("abcdefg"), frozenset("abcdef")
    cur = Epoch(10, seven, six, seven)  # g died: off the ring, still a voter
    a = Ownership("a", CFG, cur, 0.0)
    a.established(0.0, cur)
    asked: list[frozenset[str]] = []

    def settled(ring: frozenset[str], repaired: frozenset[str]) -> bool:
        asked.append(repaired)
        return ring == seven and repaired >= seven

    a.settled = settled
    a.forget("g")
    e = a.next_epoch(10.0, six, frozenset())
    assert e is not None and e.voters == six and e.members == six
    assert e.gone == frozenset("g") and e.rings == (seven,) and asked and "g" in asked[-1]
    assert Epoch.unpack(e.pack()) == e
    a.propose(10.0, e)
    a.established(10.0, e)
    for m in six:
        a.note_repaired(m, e.number)
    e2 = a.next_epoch(30.0, six - {"f"}, frozenset())  # f dies: the next change drops the settled ring of seven
    assert e2 is not None and e2.rings == (six,) and e2.gone == frozenset()


def test_voters_stuck_on_a_higher_number_that_never_passed_are_moved_past_it_with_the_same_ring():
    """A proposal that never passed leaves the voters that accepted it on its
    number, without a lease (they refuse grants under ours, ours refuse
    theirs). The proposer, whose ring is unchanged, proposes the same ring
    past that number once it has been heard of for ``stuck_after``; not at
    once, so a proposal of another proposer on its way is not raced."""
    ring = frozenset("abcde")
    a = Ownership("a", CFG, epoch(4, "abcde"), 0.0)
    a.established(0.0, a.epoch)
    assert a.next_epoch(10.0, ring, frozenset()) is None
    stuck = Epoch(5, ring, frozenset("abcd"), ring)  # b's proposal without e, accepted by c and d only
    assert not a.learn(10.0, stuck, established=False)  # heard in c's lease request
    assert a.epoch.number == 4
    assert a.next_epoch(10.5, ring, frozenset()) is None
    e6 = a.next_epoch(10.0 + CFG.stuck_after, ring, frozenset())
    assert e6 is not None and e6.number == 6 and e6.members == ring and e6.voters == ring
    c = Ownership("c", CFG, epoch(4, "abcde"), 0.0)
    c.established(0.0, c.epoch)
    assert c.accept_proposal(10.0, stuck, ring - {"e"})
    assert c.accept_proposal(13.0, e6, ring)  # the stuck voter takes the same ring past its number
    a.propose(13.0, e6)
    a.established(13.5, e6)
    assert a.next_epoch(30.0, ring, frozenset()) is None  # moved past: nothing more
