"""Group rules: a hypothesis state machine drives random operations by random
actors against ``group_rules`` and against a plain model of who may do what,
written here independently; both must agree on every outcome, and the
group's invariants must always hold."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from timpy.errors import Code, RequestError
from timpy.im import group_rules as g
from timpy.im.group_rules import JoinPolicy, Role

USERS = [f"u{i}" for i in range(7)]
MAX = 5
users = st.sampled_from(USERS)


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.group = g.create("g1", "u0", "friends", JoinPolicy.APPROVAL, ["u1"], max_size=MAX)
        # The model: plain dicts and sets.
        self.roles = {"u0": 2, "u1": 0}
        self.requests: set[str] = set()
        self.muted: set[str] = set()
        self.all_muted = False
        self.policy = "approval"
        self.dead = False

    def attempt(self, allowed: bool | Code, op, *args) -> None:  # noqa: ANN001
        """Run ``op``; it must succeed exactly when the model allows it."""
        before = self.group
        try:
            after = op(self.group, *args)
        except RequestError as exc:
            assert allowed is not True, f"{op.__name__}{args} refused: {exc}"
            if isinstance(allowed, Code):
                assert exc.code == allowed
            assert self.group == before  # nothing changed
            return
        assert allowed is True, f"{op.__name__}{args} was allowed"
        self.group = after

    def role(self, user: str) -> int:
        return self.roles.get(user, -1)

    def gate(self, actor: str, need: int) -> bool | Code:
        if self.dead:
            return Code.NO_SUCH_GROUP
        if actor not in self.roles:
            return Code.NOT_A_MEMBER
        return True if self.roles[actor] >= need else Code.NOT_ALLOWED

    @rule(user=users)
    def join(self, user):
        if self.dead:
            return self.attempt(Code.NO_SUCH_GROUP, g.join, user)
        if user in self.roles:
            return self.attempt(True, g.join, user)
        if self.policy == "invite":
            return self.attempt(Code.NOT_ALLOWED, g.join, user)
        if self.policy == "open":
            if len(self.roles) >= MAX:
                return self.attempt(Code.GROUP_FULL, g.join, user)
            self.attempt(True, g.join, user)
            self.roles[user] = 0
            self.requests.discard(user)
            return None
        self.attempt(True, g.join, user)
        self.requests.add(user)
        return None

    @rule(actor=users, user=users, yes=st.booleans())
    def decide(self, actor, user, yes):
        ok = self.gate(actor, 1)
        if ok is True and user not in self.requests:
            ok = Code.BAD_REQUEST
        if ok is True and yes and len(self.roles) >= MAX:
            ok = Code.GROUP_FULL
        self.attempt(ok, g.approve if yes else g.reject, actor, user)
        if ok is True:
            self.requests.discard(user)
            if yes:
                self.roles[user] = 0

    @rule(actor=users, invited=st.lists(users, max_size=3))
    def invite(self, actor, invited):
        ok = self.gate(actor, 0)
        if ok is True and self.roles[actor] < 1 and self.policy != "open":
            ok = Code.NOT_ALLOWED
        new = [u for u in dict.fromkeys(invited) if u not in self.roles]
        if ok is True and len(self.roles) + len(new) > MAX:
            ok = Code.GROUP_FULL
        self.attempt(ok, g.invite, actor, invited)
        if ok is True:
            for u in new:
                self.roles[u] = 0
                self.requests.discard(u)

    @rule(user=users)
    def leave(self, user):
        ok = self.gate(user, 0)
        if ok is True and self.roles[user] == 2:
            ok = Code.NOT_ALLOWED
        self.attempt(ok, g.leave, user)
        if ok is True:
            del self.roles[user]
            self.muted.discard(user)

    @rule(actor=users, user=users)
    def kick(self, actor, user):
        ok = self.gate(actor, 0)
        if ok is True and user not in self.roles:
            ok = Code.NOT_A_MEMBER
        if ok is True and user == actor:
            ok = Code.BAD_REQUEST
        if ok is True and self.roles[actor] <= self.roles[user]:
            ok = Code.NOT_ALLOWED
        self.attempt(ok, g.kick, actor, user)
        if ok is True:
            del self.roles[user]
            self.muted.discard(user)

    @rule(actor=users, user=users, admin=st.booleans())
    def set_admin(self, actor, user, admin):
        ok = self.gate(actor, 2)
        if ok is True and user not in self.roles:
            ok = Code.NOT_A_MEMBER
        if ok is True and self.roles[user] == 2:
            ok = Code.BAD_REQUEST
        self.attempt(ok, g.set_admin, actor, user, admin)
        if ok is True:
            self.roles[user] = 1 if admin else 0

    @rule(actor=users, user=users)
    def transfer(self, actor, user):
        ok = self.gate(actor, 2)
        if ok is True and user != actor and user not in self.roles:
            ok = Code.NOT_A_MEMBER
        self.attempt(ok, g.transfer, actor, user)
        if ok is True and user != actor:
            self.roles[actor], self.roles[user] = 1, 2
            self.muted.discard(user)

    @rule(actor=users, user=users, on=st.booleans())
    def mute(self, actor, user, on):
        ok = self.gate(actor, 0)
        if ok is True and user not in self.roles:
            ok = Code.NOT_A_MEMBER
        if ok is True and (self.roles[actor] < 1 or self.roles[actor] <= self.roles[user]):
            ok = Code.NOT_ALLOWED
        self.attempt(ok, g.mute, actor, user, on)
        if ok is True:
            (self.muted.add if on else self.muted.discard)(user)

    @rule(actor=users, on=st.booleans())
    def mute_all(self, actor, on):
        ok = self.gate(actor, 1)
        self.attempt(ok, g.mute_all, actor, on)
        if ok is True:
            self.all_muted = on

    @rule(actor=users, policy=st.sampled_from(["open", "approval", "invite"]))
    def set_policy(self, actor, policy):
        ok = self.gate(actor, 1)
        self.attempt(ok, g.set_policy, actor, JoinPolicy(policy))
        if ok is True:
            self.policy = policy

    @rule(actor=users)
    def dissolve(self, actor):
        ok = self.gate(actor, 2)
        self.attempt(ok, g.dissolve, actor)
        if ok is True:
            self.dead = True
            self.requests.clear()
            self.muted.clear()

    @rule(user=users)
    def send(self, user):
        ok = self.gate(user, 0)
        if ok is True and (user in self.muted or (self.all_muted and self.roles[user] < 1)):
            ok = Code.MUTED
        self.attempt(ok, lambda group, u: (g.check_send(group, u), group)[1], user)

    @invariant()
    def agrees_with_the_model(self):
        grp = self.group
        assert {u: int(r) for u, r in grp.members.items()} == self.roles
        assert set(grp.requests) == self.requests and set(grp.muted) == self.muted
        assert grp.all_muted == self.all_muted and grp.dissolved == self.dead and grp.policy == self.policy

    @invariant()
    def one_owner_within_limits(self):
        grp = self.group
        assert sum(r == Role.OWNER for r in grp.members.values()) == 1
        assert len(grp.members) <= MAX
        assert grp.muted <= set(grp.members) and not (grp.requests & set(grp.members))


GroupMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_group_rules = GroupMachine.TestCase


def test_names_and_sizes_are_checked():
    with pytest.raises(RequestError) as bad:
        g.create("g", "a", "   ")
    assert bad.value.code == Code.BAD_REQUEST
    with pytest.raises(RequestError) as full:
        g.create("g", "a", "x", members=["b", "c"], max_size=2)
    assert full.value.code == Code.GROUP_FULL
    group = g.create("g", "a", "x", JoinPolicy.OPEN)
    assert g.rename(group, "a", "  new name ").name == "new name"
    assert group.owner == "a" and group.is_admin("a") and not group.is_admin("b")
