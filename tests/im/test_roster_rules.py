"""Roster rules against an independent model, driven by a hypothesis state machine."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from timpy.errors import Code, RequestError
from timpy.im import roster_rules as rr

users = st.sampled_from(["a", "b", "c", "d"])


class RosterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.r = rr.Relations()
        self.friends: set[frozenset[str]] = set()
        self.pending: set[tuple[str, str]] = set()
        self.blocks: set[tuple[str, str]] = set()

    def attempt(self, expect: bool | Code, op, *args) -> bool:  # noqa: ANN001
        before = self.r
        try:
            self.r = op(self.r, *args)
        except RequestError as exc:
            assert expect is not True, f"{op.__name__}{args} refused: {exc}"
            assert exc.code == expect
            assert self.r == before
            return False
        assert expect is True, f"{op.__name__}{args} allowed"
        return True

    @rule(a=users, b=users)
    def request(self, a, b):
        if a == b:
            expect = Code.BAD_REQUEST
        elif (a, b) in self.blocks:
            expect = Code.NOT_ALLOWED
        elif (b, a) in self.blocks:
            expect = Code.BLOCKED
        else:
            expect = True
        if self.attempt(expect, rr.request, a, b) and frozenset((a, b)) not in self.friends:
            if (b, a) in self.pending:
                self.pending.discard((b, a))
                self.friends.add(frozenset((a, b)))
            else:
                self.pending.add((a, b))

    @rule(a=users, b=users, yes=st.booleans())
    def answer(self, a, b, yes):
        expect = True if (a, b) in self.pending else Code.BAD_REQUEST
        if self.attempt(expect, rr.accept if yes else rr.reject, b, a):
            self.pending.discard((a, b))
            if yes:
                self.friends.add(frozenset((a, b)))

    @rule(a=users, b=users)
    def remove(self, a, b):
        expect = True if frozenset((a, b)) in self.friends and a != b else Code.BAD_REQUEST
        if self.attempt(expect, rr.remove, a, b):
            self.friends.discard(frozenset((a, b)))

    @rule(a=users, b=users)
    def block(self, a, b):
        if self.attempt(True if a != b else Code.BAD_REQUEST, rr.block, a, b):
            self.blocks.add((a, b))
            self.friends.discard(frozenset((a, b)))
            self.pending -= {(a, b), (b, a)}

    @rule(a=users, b=users)
    def unblock(self, a, b):
        if self.attempt(True if (a, b) in self.blocks else Code.BAD_REQUEST, rr.unblock, a, b):
            self.blocks.discard((a, b))

    @rule(a=users, b=users)
    def message(self, a, b):
        self.attempt(Code.BLOCKED if (b, a) in self.blocks else True, lambda r, x, y: (rr.check_reach(r, x, y), r)[1], a, b)

    @invariant()
    def agrees_with_the_model(self):
        assert set(self.r.friends) == self.friends
        assert set(self.r.pending) == self.pending
        assert set(self.r.blocks) == self.blocks

    @invariant()
    def consistent(self):
        for a, b in self.r.blocks:  # a block leaves no friendship or request between the two
            assert not self.r.are_friends(a, b)
            assert (a, b) not in self.r.pending and (b, a) not in self.r.pending
        for a, b in self.r.pending:
            assert not self.r.are_friends(a, b) and (b, a) not in self.r.pending and a != b
        assert all(len(p) == 2 for p in self.r.friends)


RosterMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_roster_rules = RosterMachine.TestCase
