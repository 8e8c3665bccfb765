"""Where keys live (``timpy.cluster.placement``): what a ring of one has to catch up from."""

from __future__ import annotations

from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.ring import HashRing


def test_a_ring_of_one_is_alone_only_when_no_other_node_held_its_keys():
    p = Placement("a", "", ReplicationConfig())
    assert p.single and p.alone  # a standalone node, a new cluster's first member
    p.set_members({"a", "b", "c"})
    assert not p.single and not p.alone
    p.set_members({"a"}, previous={"a", "b", "c"})
    # One ring member after three (a 2-node cluster shrunk by ``forget``, or a
    # ring of one that should never have passed): b and c held keys a now
    # owns, so a must catch up from them before it answers for any of them.
    assert p.single and not p.alone
    assert p.previous_replicas(b"key") != ["a"]


def test_catch_up_reads_every_ring_of_the_history_and_a_ring_is_settled_once_enough_holders_repaired():
    cfg = ReplicationConfig(replicas=3, write_quorum=2, vnodes=16)
    p = Placement("a", "", cfg)
    seven, six, five = frozenset("abcdefg"), frozenset("abcdef"), frozenset("abcde")
    p.set_members(five, previous=six, earlier=[seven])
    key = next(k for k in (bytes([i]) for i in range(256)) if "f" in HashRing.of(seven, 16).replicas(k, 3)
               and "g" in HashRing.of(seven, 16).replicas(k, 3))
    assert p.history_replicas(key) == [HashRing.of(six, 16).replicas(key, 3), HashRing.of(seven, 16).replicas(key, 3)]
    assert not p.set_members(five, previous=six, earlier=[seven])  # the same epoch again changes nothing
    version = p.version
    assert p.set_members(five, previous=six) and p.version == version + 1  # a shorter history is a change too
    assert p.history_replicas(key) == [HashRing.of(six, 16).replicas(key, 3)]

    # Every key of a ring must have R - W + 1 = 2 replicas there that finished
    # a repair pass: then one of them held any write acknowledged on W = 2.
    assert p.settled(seven, seven)
    assert not p.settled(seven, five)  # keys on f and g and one other: one repaired holder is not enough
    assert not p.settled(seven, frozenset())
    ring = HashRing.of(seven, 16)
    for gone in "abcdefg":
        # one holder missing leaves 2 of 3 on every key
        assert p.settled(seven, seven - {gone})
    assert all(len(s) == 3 for s in ring.replica_sets(3))


def test_members_an_operator_forgot_count_as_answered_with_nothing():
    """Catch-up hears R − W + 1 of a key's replicas in each ring; a member an
    operator forgot (``Epoch.gone``) will never answer, and what only it held
    is given up: it counts as answered."""
    p = Placement("a", "", ReplicationConfig(replicas=3, write_quorum=2, vnodes=16))
    assert p.answers_needed(["a", "b", "c"]) == 2
    p.set_members("abc", "abcde", (), gone="de")
    assert p.gone == frozenset("de") and p.answers_needed(["a", "d", "c"]) == 1
    assert p.answers_needed(["d", "e", "c"]) == 0
    assert p.answers_needed(["a"]) == 1  # a ring of one: its one replica
    assert not p.set_members("abc", "abcde", ()) and p.gone == frozenset("de")  # not told: as before
    assert p.set_members("abc", "abcde", (), ()) and p.gone == frozenset()  # the next epoch names none
