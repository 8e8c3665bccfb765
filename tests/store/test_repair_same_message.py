"""Repair between two replicas holding one message at one slot with two
different times (seen in tests/e2e/test_partition_processes.py after a
split: the same sender's message, dedup and sealed bytes, with another
``created_ms`` on one node). The slot hashes differ, so repair calls it a
conflict; one pass must make both copies equal, and the next pass must find
nothing, instead of reporting the same conflict on every pass forever."""

from __future__ import annotations

from sqlalchemy import update

from tests.support.repair_replicas import CONV, A, B, one_pass, replica
from timpy.store import schema as s
from timpy.store.rows import NewMessage


def test_one_message_at_one_slot_with_two_times_is_made_equal_in_one_pass():
    a, b = replica(), replica()
    messages = [NewMessage(CONV, (A, B), A, bytes([i]) * 16, 1000 + i, f"m{i}".encode()) for i in range(4)]
    a.write_batch(messages)
    b.apply_copies(a.conversation_copies(CONV, 0, 100))
    with b.engine.begin() as conn:  # the same message (dedup, sealed bytes) at seq 3, stored with another time
        conn.execute(update(s.messages).where(s.messages.c.seq == 3).values(created_ms=99_999))
    assert a.repair_roots("conv", [CONV]) != b.repair_roots("conv", [CONV])

    assert one_pass(a, b) == [3]
    assert a.repair_roots("conv", [CONV]) == b.repair_roots("conv", [CONV])
    assert one_pass(b, a) == [] and one_pass(a, b) == []
    for repo in (a, b):
        copies = repo.conversation_copies(CONV, 0, 100)
        assert [(q, dedup) for _c, q, dedup, _t, _x, _e in copies.messages] == [(i + 1, bytes([i]) * 16) for i in range(4)]
