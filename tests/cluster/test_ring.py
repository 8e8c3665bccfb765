import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster.ring import HashRing

names = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=6)
member_sets = st.sets(names, min_size=1, max_size=12)
keys = st.lists(st.binary(min_size=1, max_size=16), min_size=1, max_size=200)


@given(member_sets, keys)
def test_owner_is_the_first_replica_and_replicas_are_distinct(members, ks):
    ring = HashRing.of(members, vnodes=16)
    for k in ks:
        reps = ring.replicas(k, 3)
        assert reps[0] == ring.owner(k)
        assert len(reps) == len(set(reps)) == min(3, len(members))


@given(member_sets, names, keys)
def test_adding_a_member_moves_keys_only_to_it(members, new, ks):
    if new in members:
        return
    old = HashRing.of(members, vnodes=16)
    grown = old.with_member(new)
    for k in ks:
        before, after = old.owner(k), grown.owner(k)
        assert after == before or after == new  # never between two old members


@given(member_sets, keys)
def test_removing_a_member_moves_only_its_keys(members, ks):
    ring = HashRing.of(members, vnodes=16)
    gone = sorted(members)[0]
    shrunk = ring.without_member(gone)
    for k in ks:
        if ring.owner(k) != gone:
            assert shrunk.owner(k) == ring.owner(k)
        elif len(members) > 1:
            assert shrunk.owner(k) != gone


@given(member_sets)
def test_shares_sum_to_one(members):
    shares = HashRing.of(members, vnodes=8).shares()
    assert set(shares) == members
    assert abs(sum(shares.values()) - 1.0) < 1e-9


def load_stddev(n: int, vnodes: int = 128, nkeys: int = 20_000) -> float:
    ring = HashRing.of([f"node{i}" for i in range(n)], vnodes)
    counts = dict.fromkeys(ring.members, 0)
    for i in range(nkeys):
        counts[ring.owner(i.to_bytes(8, "big"))] += 1
    mean = nkeys / n
    return statistics.pstdev(counts.values()) / mean


@pytest.mark.parametrize("n", [3, 10, 50])
def test_spread_is_even(n):
    # relative standard deviation of keys per node, 128 virtual nodes each
    assert load_stddev(n) < 0.15


def test_adding_one_node_moves_about_its_fair_share():
    n, nkeys = 10, 20_000
    old = HashRing.of([f"node{i}" for i in range(n)])
    new = old.with_member("node-new")
    moved = sum(old.owner(i.to_bytes(8, "big")) != new.owner(i.to_bytes(8, "big")) for i in range(nkeys))
    assert abs(moved / nkeys - 1 / (n + 1)) < 0.04


def test_weights_scale_shares():
    ring = HashRing({"big": 2.0, "small": 1.0})
    shares = ring.shares()
    assert 1.5 < shares["big"] / shares["small"] < 2.6


def test_empty_ring_and_bad_arguments():
    with pytest.raises(LookupError):
        HashRing({}).owner(b"k")
    with pytest.raises(ValueError):
        HashRing({"a": 0})
    with pytest.raises(ValueError):
        HashRing({"a": 1}, vnodes=0)
