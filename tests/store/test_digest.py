"""The pure digest and diff logic of repair (timpy.store.digest), against
random tables and random damage."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from timpy.store import digest as d

# An item's identity, then (for messages) a state byte that only moves forward, then the epoch it was numbered under.
slot_values = st.builds(
    lambda ident, state, epoch: ident + state + epoch.to_bytes(8, "big"),
    st.binary(min_size=d.HASH_SIZE, max_size=d.HASH_SIZE),
    st.sampled_from([b"\x00", b"\x01"]),
    st.sampled_from([0, 1, 2, 7, 2**40]),
)
tables = st.dictionaries(st.integers(min_value=1, max_value=2000), slot_values, max_size=300)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[dict[int, bytes], dict[int, bytes], set[int]]:
    """A table, a copy of it with random damage (rows deleted, changed,
    added), and the slots that were damaged."""
    table = draw(tables)
    copy = dict(table)
    touched: set[int] = set()
    if table:
        for slot in draw(st.lists(st.sampled_from(sorted(table)), max_size=20)):
            copy.pop(slot, None)
            touched.add(slot)
        for slot in draw(st.lists(st.sampled_from(sorted(table)), max_size=5)):
            value = draw(slot_values)
            if value != table[slot]:
                copy[slot] = value
                touched.add(slot)
        for slot in draw(st.lists(st.sampled_from(sorted(table)), max_size=5)):  # recalled on one side only
            if table[slot][d.HASH_SIZE : d.HASH_SIZE + 1] == b"\x00" and slot not in touched:
                copy[slot] = table[slot][: d.HASH_SIZE] + b"\x01" + table[slot][d.HASH_SIZE + 1 :]
                touched.add(slot)
    for slot, value in draw(st.dictionaries(st.integers(min_value=1, max_value=2500), slot_values, max_size=5)).items():
        if slot not in table:
            copy[slot] = value
            touched.add(slot)
    return table, copy, touched


@given(damaged())
def test_diff_finds_exactly_the_damaged_buckets_and_slots(case: tuple[dict[int, bytes], dict[int, bytes], set[int]]) -> None:
    mine, theirs, touched = case
    mine_b, theirs_b = d.buckets(mine), d.buckets(theirs)
    assert (d.root(b"m", mine_b) == d.root(b"m", theirs_b)) == (not touched)
    differing = d.diff_buckets(mine_b, theirs_b)
    assert set(differing) == {slot // d.BUCKET for slot in touched}
    slots = d.diff_slots(d.in_buckets(mine, differing), d.in_buckets(theirs, differing))
    assert set(slots.send) | set(slots.fetch) == touched
    assert not set(slots.send) & set(slots.fetch)
    assert set(slots.conflicts) == {
        s for s in touched if s in mine and s in theirs and mine[s][: d.HASH_SIZE] != theirs[s][: d.HASH_SIZE]
    }


@given(damaged())
def test_applying_the_diff_makes_both_sides_equal_whoever_runs_it(
    case: tuple[dict[int, bytes], dict[int, bytes], set[int]]
) -> None:
    a, b, _ = case

    def repaired(mine: dict[int, bytes], theirs: dict[int, bytes]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        diff = d.diff_slots(mine, theirs)
        mine, theirs = dict(mine), dict(theirs)
        for slot in diff.fetch:
            mine[slot] = theirs[slot]
        for slot in diff.send:
            theirs[slot] = mine[slot]
        return mine, theirs

    a1, b1 = repaired(a, b)
    b2, a2 = repaired(b, a)
    assert a1 == b1 == a2 == b2  # the same result from either side
    for s, value in a1.items():
        values = [v for v in (a.get(s), b.get(s)) if v is not None]
        if len({v[: d.HASH_SIZE] for v in values}) == 1:  # one message: its later state, then the higher epoch
            assert value == max(values, key=lambda v: (v[d.HASH_SIZE], int.from_bytes(v[d.HASH_SIZE + 1 :], "big")))
        else:  # two messages: the higher epoch stays, then the lowest hash
            assert value == min(values, key=lambda v: (-int.from_bytes(v[d.HASH_SIZE + 1 :], "big"), v[: d.HASH_SIZE]))


@given(st.lists(tables, min_size=3, max_size=3))
def test_pairwise_merges_converge_in_any_order(replicas: list[dict[int, bytes]]) -> None:
    """Three replicas merged pairwise (x with y, x with z, then x with y
    again: one repair pass on x) end equal, whichever replica runs it."""
    for runner in range(3):
        copies = [dict(r) for r in replicas]
        x = copies[runner]
        others = [c for i, c in enumerate(copies) if i != runner]
        for other in [*others, *others]:
            diff = d.diff_slots(x, other)
            for slot in diff.fetch:
                x[slot] = other[slot]
            for slot in diff.send:
                other[slot] = x[slot]
        assert copies[0] == copies[1] == copies[2]


@given(st.lists(st.tuples(st.binary(max_size=20), st.integers(), st.booleans()), max_size=10))
def test_meta_hash_ignores_order_and_sees_every_change(items: list[tuple[bytes, int, bool]]) -> None:
    assert d.meta_hash(items) == d.meta_hash(list(reversed(items)))
    if items:
        changed = [*items[:-1], (items[-1][0], items[-1][1] + 1, items[-1][2])]
        assert d.meta_hash(changed) != d.meta_hash(items)


def test_slot_hashes_tell_messages_apart() -> None:
    live, gone = d.message_hash(b"x" * 16, 5, False), d.message_hash(b"x" * 16, 5, True)
    assert live != gone and d.same_item(live, gone) and d.winner(live, gone) == gone
    assert d.message_hash(b"x" * 16, 5, False) != d.message_hash(b"y" * 16, 5, False)
    assert d.inbox_hash(b"c" * 16, 1) != d.inbox_hash(b"c" * 16, 2)
    assert d.inbox_hash(b"c" * 16, 1, b"x" * 16) != d.inbox_hash(b"c" * 16, 1, b"y" * 16)


def test_the_higher_epoch_wins_a_slot_whatever_the_hashes() -> None:
    """docs/consistency.md, "Epochs on rows": an acknowledged row is never the lower epoch of a slot."""
    for a, b in ((b"x", b"y"), (b"y", b"x")):
        old, new = d.message_hash(a * 16, 5, False, 3), d.message_hash(b * 16, 6, False, 4)
        assert d.winner(old, new) == d.winner(new, old) == new
        assert d.epoch_of(new) == 4
    # one message in two states: deleted stays deleted, whichever epoch carries it
    live, gone = d.message_hash(b"x" * 16, 5, False, 9), d.message_hash(b"x" * 16, 5, True, 2)
    assert d.winner(live, gone) == gone
