"""Where keys live (``timpy.cluster.placement``): what a ring of one has to catch up from."""

from __future__ import annotations

from timpy.cluster.placement import Placement, ReplicationConfig


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
