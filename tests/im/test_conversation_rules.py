"""The conversation list's rules (pure): order, pages, flags, counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from timpy.im import conversation_rules as rules
from timpy.im.kinds import ACTING

flags = st.builds(rules.Flags, st.booleans(), st.booleans(), st.booleans())
activity = st.builds(rules.Activity, st.text("0123456789abcdef", min_size=2, max_size=2),
                     st.integers(0, 50), st.integers(0, 50), flags)
activities = st.lists(activity, max_size=30, unique_by=lambda a: a.conversation)


@given(activities, st.booleans(), st.integers(1, 7))
def test_pages_cover_the_list_once_in_order(items, archived, size):
    whole, total = rules.visible(items, archived, 0, 1000)
    assert total == len(whole) == sum(1 for a in items if a.flags.archived == archived)
    paged = []
    for offset in range(0, total + size, size):
        page, t = rules.visible(items, archived, offset, size)
        assert t == total
        paged += page
    assert paged == whole
    # Pinned first; then newest activity first; ties by position, then id.
    for x, y in zip(whole, whole[1:], strict=False):
        assert (not x.flags.pinned, -x.last_ms, -x.last_pos, x.conversation) < (
            not y.flags.pinned, -y.last_ms, -y.last_pos, y.conversation)


@given(st.lists(st.tuples(st.text("abc", min_size=1, max_size=2), st.booleans(), st.booleans(), st.booleans()),
                max_size=20))
def test_flags_round_trip_and_unset_flags_leave_no_trace(changes):
    state = rules.UserConversations()
    model: dict[str, tuple[bool, bool, bool]] = {}
    for conv, m, p, a in changes:
        state = rules.set_flags(state, conv, m, p, None)
        state = rules.set_flags(state, conv, None, None, a)
        model[conv] = (m, p, a)
        state = rules.UserConversations.unpack(state.pack())
    for conv, (m, p, a) in model.items():
        assert state.flags_of(conv) == rules.Flags(m, p, a)
    assert set(state.flags) == {c for c, f in model.items() if any(f)}


def test_groups_joined_and_left():
    s = rules.in_group(rules.UserConversations(), "g1", "crew", 5)
    s = rules.set_flags(s, "g1", None, True, None)
    s = rules.in_group(s, "g1", "new name", 9)
    assert s.groups == {"g1": ("new name", 5)}
    s = rules.out_of_group(s, "g1")
    assert (s.groups, s.left, s.flags) == ({}, frozenset({"g1"}), {})
    s = rules.UserConversations.unpack(rules.in_group(s, "g1", "back", 11).pack())
    assert (s.groups, s.left) == ({"g1": ("back", 11)}, frozenset())


message = st.tuples(st.integers(1, 30), st.sampled_from(["me", "you", "them"]),
                    st.sampled_from([0, 1, 2, 4, 100]),
                    st.sampled_from([{}, {"mentions": "me"}, {"mentions": "You, ME"}, {"mentions": "@all"},
                                     {"mentions": "them"}]),
                    st.booleans())


@given(st.lists(message, max_size=30), st.integers(0, 30))
def test_unread_and_mentions_counts(messages, mark):
    got = rules.count_unread("me", mark, messages, ACTING)
    shown = [m for m in messages if m[0] > mark and not m[4] and m[1] != "me" and m[2] not in ACTING]
    assert got.unread == len(shown)
    assert got.mentions == sum(1 for m in shown if m[3].get("mentions", "").lower().replace(" ", "").split(",")
                               and ({"me", "@all"} & set(m[3].get("mentions", "").lower().replace(" ", "").split(","))))


def test_reply_targets_and_group_mentions():
    import pytest

    from timpy.errors import Code, RequestError
    from timpy.im import reply_rules

    assert reply_rules.reply_target({}) is None and reply_rules.reply_target({"reply_to": "7"}) == 7
    for bad in ("0", "-1", "x", ""):
        with pytest.raises(RequestError) as e:
            reply_rules.reply_target({"reply_to": bad})
        assert e.value.code == Code.INVALID_MESSAGE
    reply_rules.check_reply_target(True, False, False)
    for found, gone, acting, code in ((False, False, False, Code.NO_SUCH_MESSAGE), (True, True, False, Code.NO_SUCH_MESSAGE),
                                      (True, False, True, Code.BAD_REQUEST)):
        with pytest.raises(RequestError) as e:
            reply_rules.check_reply_target(found, gone, acting)
        assert e.value.code == code
    members = {"amy", "ben"}
    reply_rules.check_group_mentions({"mentions": "@all, Ben"}, members, True, False)
    reply_rules.check_group_mentions({"mentions": "@all"}, members, False, True)
    for ext, admin, code in (({"mentions": "@all"}, False, Code.NOT_ALLOWED), ({"mentions": "dan"}, True, Code.NOT_A_MEMBER),
                             ({"mentions": ",".join(f"u{i}" for i in range(51))}, True, Code.INVALID_MESSAGE)):
        with pytest.raises(RequestError) as e:
            reply_rules.check_group_mentions(ext, members, admin, False)
        assert e.value.code == code


def test_threads_fold_into_their_parents_and_left_groups_drop_out():
    state = rules.in_group(rules.UserConversations(), "g2", "quiet group", 3)
    state = rules.out_of_group(rules.in_group(state, "g1", "left", 1), "g1")
    inbox = [("c1", 5, 50, ""), ("t1", 9, 90, "c1"), ("t2", 2, 20, "c3"), ("g1", 7, 70, ""), ("c2", 6, 60, "")]
    found, threads = rules.activities(inbox, state)
    assert threads == {"t1": "c1", "t2": "c3"}
    assert {c: (a.last_ms, a.last_pos) for c, a in found.items()} == {
        "c1": (90, 9), "c3": (20, 2), "c2": (60, 6), "g2": (3, 0)}
