"""Rows carry the ring epoch they were numbered under (docs/consistency.md,
"Epochs on rows"): of two values of one slot the higher epoch wins, in copies,
in inbox placement and in repair, on any replica and from either side; an
owner's new write also wins an equal epoch (it replaces a row whose undo
missed this node)."""

from __future__ import annotations

from sqlalchemy import select

from tests.support.repair_replicas import CONV, A, B, one_pass, replica
from timpy.store import schema as s
from timpy.store.repository import Repository
from timpy.store.rows import Copies, InboxItem, NewMessage


def slots(repo: Repository) -> dict[int, tuple[bytes, int]]:
    """(conversation CONV) seq -> (dedup, epoch)."""
    with repo.engine.connect() as conn:
        m = s.messages
        rows = conn.execute(select(m.c.seq, m.c.dedup, m.c.epoch).where(m.c.conv_id == CONV))
        return {int(r.seq): (bytes(r.dedup), int(r.epoch)) for r in rows}


def inbox(repo: Repository, user: bytes) -> dict[int, tuple[int, int]]:
    """position -> (seq, epoch)."""
    with repo.engine.connect() as conn:
        i = s.inbox
        rows = conn.execute(select(i.c.pos, i.c.seq, i.c.epoch).where(i.c.user_id == user))
        return {int(r.pos): (int(r.seq), int(r.epoch)) for r in rows}


def message(seq: int, tag: int, epoch: int) -> tuple[bytes, int, bytes, int, bytes, int]:
    sealer_free = bytes([tag]) * 16  # the content is never opened here
    return (CONV, seq, sealer_free, 1000 + tag, b"sealed", epoch)


def test_new_rows_carry_the_writers_epoch():
    repo = replica()
    repo.write_batch([NewMessage(CONV, (A, B), A, b"\x01" * 16, 1, b"m1")], epoch=7)
    assert slots(repo) == {1: (b"\x01" * 16, 7)}
    assert inbox(repo, A) == {1: (1, 7)} and inbox(repo, B) == {1: (1, 7)}
    copies = repo.conversation_copies(CONV, 0, 10)
    assert copies.messages[0][5] == 7
    assert Copies.unpack(copies.pack()).messages == copies.messages
    # a copy from a node before schema 6 (no epoch in the tuple) reads as epoch 0
    old = Copies.unpack(Copies(messages=[(CONV, 2, b"\x02" * 16, 5, b"x")], inbox=[(A, 2, CONV, 2)]).pack())
    assert old.messages[0][5] == 0 and old.inbox[0][4] == 0


def test_a_copy_of_a_higher_epoch_replaces_the_slot_and_a_lower_one_does_not():
    repo = replica()
    repo.apply_copies(Copies(messages=[message(1, 1, 3), message(2, 2, 3)]))
    repo.apply_copies(Copies(messages=[message(2, 9, 2)]))  # older epoch: never acknowledged over an epoch-3 row
    assert slots(repo)[2] == (bytes([2]) * 16, 3)
    repo.apply_copies(Copies(messages=[message(2, 8, 3)]))  # equal epoch, not the owner's write: what is here stays
    assert slots(repo)[2] == (bytes([2]) * 16, 3)
    repo.apply_copies(Copies(messages=[message(2, 7, 4)]))  # newer epoch wins
    assert slots(repo) == {1: (bytes([1]) * 16, 3), 2: (bytes([7]) * 16, 4)}


def test_an_owners_write_replaces_a_row_of_its_epoch_whose_undo_missed_this_node():
    repo = replica()
    repo.apply_copies(Copies(messages=[message(5, 1, 6)], inbox=[(A, 5, CONV, 5, 6)]), True)
    # the owner undid that write elsewhere, then numbered seq 5 again for another message
    repo.apply_copies(Copies(messages=[message(5, 2, 6)], inbox=[(A, 5, CONV, 5, 6)]), True)
    assert slots(repo) == {5: (bytes([2]) * 16, 6)}


def test_one_message_in_two_slots_keeps_the_higher_epoch():
    repo = replica()
    repo.apply_copies(Copies(messages=[message(3, 1, 2)]))
    repo.apply_copies(Copies(messages=[message(4, 1, 5)]))  # the same message (dedup) numbered again later
    assert slots(repo) == {4: (bytes([1]) * 16, 5)}
    repo.apply_copies(Copies(messages=[message(3, 1, 2)]))  # a late copy of the old numbering stays out
    assert slots(repo) == {4: (bytes([1]) * 16, 5)}


def test_an_inbox_entry_sits_once_and_its_slot_goes_to_the_higher_epoch():
    repo = replica()
    repo.apply_copies(Copies(messages=[message(1, 1, 2), message(2, 2, 2)],
                             inbox=[(A, 1, CONV, 1, 2), (A, 2, CONV, 2, 2)]))
    repo.apply_copies(Copies(inbox=[(A, 2, CONV, 1, 1)]))  # older entry for a slot held newer: refused
    assert inbox(repo, A) == {1: (1, 2), 2: (2, 2)}
    # the same message at a later position under a newer epoch: the old position gives way
    repo.apply_copies(Copies(inbox=[(A, 3, CONV, 2, 3)]))
    assert inbox(repo, A) == {1: (1, 2), 3: (2, 3)}


def test_an_inbox_item_replaces_a_never_acknowledged_row_at_its_slot():
    """The user's owner held a row at (conversation, seq) from a write that was
    undone elsewhere; the conversation's owner numbered that seq again (same
    or newer epoch) and asks for the inbox entry: the entry must point at the
    new message, here and in the copies."""
    repo = replica()
    repo.apply_copies(Copies(messages=[message(4, 1, 3)], inbox=[(B, 1, CONV, 4, 3)]))
    new = InboxItem(B, CONV, 4, bytes([2]) * 16, 1002, b"sealed", 3)
    written = repo.write_batch([], [new], epoch=3)
    assert written.placed[0].pos == 1  # the entry was there: it stays, once
    assert slots(repo) == {4: (bytes([2]) * 16, 3)}
    # a late item from an older epoch does not take the slot back
    repo.write_batch([], [InboxItem(B, CONV, 4, bytes([1]) * 16, 1001, b"sealed", 2)], epoch=3)
    assert slots(repo) == {4: (bytes([2]) * 16, 3)} and inbox(repo, B) == {1: (4, 3)}


def test_repair_keeps_the_higher_epoch_whichever_side_runs_it():
    for runner in (0, 1):
        a, b = replica(), replica()
        a.apply_copies(Copies(conversations=[(CONV, [A, B])], messages=[message(1, 1, 1), message(2, 5, 4)]))  # seq 2: hash of 5, epoch 4
        b.apply_copies(Copies(conversations=[(CONV, [A, B])], messages=[message(1, 1, 1), message(2, 6, 2)]))  # seq 2: another, epoch 2
        x, y = (a, b) if runner == 0 else (b, a)
        assert one_pass(x, y) == [2]
        assert slots(a) == slots(b) == {1: (bytes([1]) * 16, 1), 2: (bytes([5]) * 16, 4)}
        assert one_pass(x, y) == []


def test_a_retried_send_and_its_inbox_append_in_one_batch_place_the_message_once():
    """A send's retry (stored already: a duplicate) and the inbox entry its
    first try asked for reach one writer batch at a node that now owns the
    recipient: the recipient's inbox gets the message at one position, not
    two (two entries of one batch carry one stamp, and repair keeps both)."""
    repo = replica()
    sent = NewMessage(CONV, (A, B), A, b"\x01" * 16, 1, b"m1")
    first = repo.write_batch([sent], epoch=5, local_users=frozenset({A})).appended[0]  # B lived elsewhere
    assert inbox(repo, B) == {}
    item = InboxItem(B, CONV, first.seq, sent.dedup, first.created_ms, first.sealed, 5)
    for order in ((item,), ()):  # the entry asked for first, and the retry alone after it
        written = repo.write_batch([sent], list(order), epoch=6, local_users=frozenset({A, B}))
        assert written.appended[0].duplicate
        assert inbox(repo, B) == {1: (1, 6)}
        assert repo.inbox_head(B) == 1


def test_one_message_held_under_two_stamps_takes_the_higher_and_the_digests_meet():
    """The same message at the same slot under two stamps on two replicas (a
    retry placed again, a copy of another epoch): repair gives both the higher
    stamp, so the key's digests are equal after one pass and the next pass
    finds nothing. Before, the slot was sent every pass and nothing changed."""
    for runner in (0, 1):
        a, b = replica(), replica()
        a.apply_copies(Copies(conversations=[(CONV, [A, B])], messages=[message(1, 1, 3), message(2, 2, 3)]))
        b.apply_copies(Copies(conversations=[(CONV, [A, B])], messages=[message(1, 1, 3), message(2, 2, 5)]))
        x, y = (a, b) if runner == 0 else (b, a)
        assert one_pass(x, y) == []  # no conflict: one message
        assert slots(a) == slots(b) == {1: (bytes([1]) * 16, 3), 2: (bytes([2]) * 16, 5)}
        assert a.repair_roots("conv", [CONV]) == b.repair_roots("conv", [CONV])


def test_one_inbox_entry_held_under_two_stamps_takes_the_higher_and_the_digests_meet():
    from timpy.store import digest as d

    for runner in (0, 1):
        a, b = replica(), replica()
        a.apply_copies(Copies(messages=[message(1, 1, 2)], inbox=[(A, 1, CONV, 1, 2)]))
        b.apply_copies(Copies(messages=[message(1, 1, 4)], inbox=[(A, 1, CONV, 1, 6)]))
        x, y = (a, b) if runner == 0 else (b, a)
        mine, theirs = x.repair_buckets("user", A), y.repair_buckets("user", A)
        differ = d.diff_buckets(mine[1], theirs[1])
        diff = d.diff_slots(x.repair_slots("user", A, differ), y.repair_slots("user", A, differ))
        assert diff.conflicts == []
        if diff.fetch:
            x.apply_repair("user", A, y.repair_rows("user", A, diff.fetch, False), [])
        if diff.send:
            y.apply_repair("user", A, x.repair_rows("user", A, diff.send, False), [])
        assert inbox(a, A) == inbox(b, A) == {1: (1, 6)}
        assert a.repair_roots("user", [A]) == b.repair_roots("user", [A])


def test_an_undo_removes_only_the_rows_of_its_own_write_not_a_later_write_of_the_same_slot():
    """A write that missed its quorum is undone by its rows' stamp. The same
    message placed again at the same slot by a later write (the retry, after
    the undo moved the head back) has a higher stamp: an undo of the first
    write that arrives late (a replica it reached only after the split healed)
    must leave it, or an acknowledged message leaves its recipient's inbox."""
    repo = replica()
    repo.apply_copies(Copies(messages=[message(1, 1, 5)], inbox=[(A, 1, CONV, 1, 5)]))
    late = repo.undo_writes([(CONV, 1, bytes([1]) * 16)], [(A, 1, CONV, 1)], stamp=3)  # the first try's stamp
    assert late == 0
    assert slots(repo) == {1: (bytes([1]) * 16, 5)} and inbox(repo, A) == {1: (1, 5)}
    assert repo.undo_writes([(CONV, 1, bytes([1]) * 16)], [(A, 1, CONV, 1)], stamp=5) == 2
    assert slots(repo) == {} and inbox(repo, A) == {}


async def test_late_copies_of_an_undone_write_are_dropped_but_a_later_writes_copies_land():
    from timpy.im.peers import Peers
    from timpy.im.replication import Replicator

    replicator = Replicator(None, Peers.standalone("n1"))  # type: ignore[arg-type]  # no storage is touched
    replicator._remember_undone([(CONV, 1, bytes([1]) * 16)], [(A, 1, CONV, 1)], 3)
    late = replicator._without_undone(Copies(messages=[message(1, 1, 3)], inbox=[(A, 1, CONV, 1, 3)]))
    assert late.messages == [] and late.inbox == []
    later = replicator._without_undone(Copies(messages=[message(1, 1, 5)], inbox=[(A, 1, CONV, 1, 5)]))
    assert later.messages == [message(1, 1, 5)] and later.inbox == [(A, 1, CONV, 1, 5)]
