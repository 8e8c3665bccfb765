"""The conversation list's and the search index's queries on every backend
(SQLite in memory and in a file, PostgreSQL, MariaDB), and what a dump of
each shows: no word of a message, no token in the clear."""

from __future__ import annotations

import os

import pytest

from tests.store.backends import BACKENDS, dump_tables, make_engine
from timpy.crypto.seal import Sealer
from timpy.im import kinds
from timpy.im import search_rules as rules
from timpy.im.search import plan_for
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import KIND_EDIT, KIND_NORMAL, KIND_RECALL, pack_content, unpack_content

ANN, BOB, CAL = b"a" * 16, b"b" * 16, b"c" * 16
DIRECT, GROUP = b"d" * 16, b"g" * 16


@pytest.fixture(params=BACKENDS)
def repo(request, tmp_path):
    r = Repository(make_engine(request.param, tmp_path), Sealer(os.urandom(32)), kinds.effect_of)
    r.create_schema()
    yield r
    r.close()


def message(conv: bytes, members: tuple[bytes, ...], n: int, sender: str, body: str, kind: int = KIND_NORMAL,
            ext: dict[str, str] | None = None) -> NewMessage:
    recipient = "#group" if conv == GROUP else "bob"
    return NewMessage(conv, members, ANN if sender == "ann" else BOB, n.to_bytes(16, "big"), 1000 + n,
                      pack_content(f"c{n}", sender, recipient, kind, body.encode(), ext or {}))


def test_search_index_and_conversation_rows(repo):
    for u in (ANN, BOB, CAL):
        repo.create_account(u, b"secret", b"profile")
    key = os.urandom(16)
    plan = plan_for(key)
    w = repo.write_batch([
        message(DIRECT, (ANN, BOB), 1, "ann", "the narwhal swims north"),
        message(DIRECT, (ANN, BOB), 2, "bob", "narwhals are whales"),
        message(GROUP, (ANN, BOB, CAL), 3, "ann", "group narwhal sighting", ext={"mentions": "bob"}),
    ])
    seqs = [a.seq for a in w.appended]
    assert repo.search_behind([DIRECT, GROUP]) == [DIRECT, GROUP]
    for conv in (DIRECT, GROUP):
        assert repo.search_index(conv, plan, 500)[1] is False

    def found(conv: bytes, query: str) -> list[int]:
        return [s for s, _ in repo.search_conversation(conv, rules.tokens(key, rules.query_terms(query)), 100)]

    assert found(DIRECT, "narwhal") == [seqs[1], seqs[0]]
    assert found(DIRECT, "narwhal north") == [seqs[0]]
    assert found(GROUP, "sight") == [seqs[2]]
    both = rules.tokens(key, rules.query_terms("narwhal"))
    assert repo.search_conversations([(DIRECT, both), (GROUP, both)], 100) == [
        (GROUP, seqs[2], 1003), (DIRECT, seqs[1], 1002), (DIRECT, seqs[0], 1001)]
    assert repo.search_conversations([(DIRECT, both), (GROUP, both)], 2) == [
        (GROUP, seqs[2], 1003), (DIRECT, seqs[1], 1002)]
    repo.write_batch([message(DIRECT, (ANN, BOB), 4, "ann", "the dolphin swims north", KIND_EDIT,
                              {"target": str(seqs[0]), "at": "1"}),
                      message(DIRECT, (ANN, BOB), 5, "bob", "", KIND_RECALL, {"target": str(seqs[1])})])
    assert repo.search_behind([DIRECT, GROUP]) == [DIRECT]
    repo.search_index(DIRECT, plan, 1)
    repo.search_index(DIRECT, plan, 1)
    assert found(DIRECT, "narwhal") == [] and found(DIRECT, "dolphin north") == [seqs[0]]
    assert repo.search_members(CAL, [DIRECT, GROUP]) == {GROUP}
    # The conversation list's reads over bob's rows.
    activity = {c: (pos, ms) for c, pos, ms, _content in repo.conversation_activity(BOB)}
    assert set(activity) == {DIRECT, GROUP}
    assert activity[DIRECT][0] > activity[GROUP][0]  # the edit and the recall came last
    repo.mark_read(BOB, DIRECT, seqs[0])
    rows = {r.conv_id: r for r in repo.conversation_rows(BOB, [DIRECT, GROUP, b"z" * 16], 16, 1000)}
    assert set(rows) == {DIRECT, GROUP} and rows[DIRECT].read_seq == seqs[0]
    assert [s for s, _, _ in rows[DIRECT].tail] == [4, 3, seqs[1], seqs[0]]
    assert [s for s, _, _ in rows[DIRECT].unread] == [4, 3, seqs[1]]
    assert rows[DIRECT].tail[2][2] == b""  # recalled: nothing left of it
    dump = dump_tables(repo.engine)
    for word in (b"narwhal", b"dolphin", b"sighting", b"north", b"narw"):
        assert word not in dump
    # Forgetting a conversation's copies drops its index too.
    repo.forget([DIRECT], [], lambda k: False)
    assert repo.search_size() == (len(rules.body_terms("group narwhal sighting")), 1)


def test_an_undone_write_that_was_indexed_leaves_the_index(repo):
    for u in (ANN, BOB):
        repo.create_account(u, b"secret", b"profile")
    key = os.urandom(16)
    plan = plan_for(key)
    repo.write_batch([message(DIRECT, (ANN, BOB), 1, "ann", "walrus one"),
                      message(DIRECT, (ANN, BOB), 2, "ann", "walrus two")])
    undone = repo.write_batch([message(DIRECT, (ANN, BOB), 3, "ann", "secret walrus plan")]).appended[0]
    repo.search_index(DIRECT, plan, 500)  # indexed before its quorum failed

    def found(query: str) -> list[int]:
        return [q for q, _ in repo.search_conversation(DIRECT, rules.tokens(key, rules.query_terms(query)), 100)]

    assert found("plan") == [3]
    repo.undo_writes([(DIRECT, undone.seq, (3).to_bytes(16, "big"))], [])
    assert repo.search_behind([DIRECT]) == [DIRECT]
    repo.write_batch([message(DIRECT, (ANN, BOB), 4, "ann", "walrus three")])  # seq 3 again
    assert repo.search_behind([DIRECT]) == [DIRECT]
    while repo.search_index(DIRECT, plan, 2)[1]:
        pass
    assert repo.search_behind([DIRECT]) == []
    assert found("plan") == [] and found("walrus") == [3, 2, 1] and found("three") == [3]


def test_several_conversations_indexed_in_one_transaction_match_one_at_a_time(repo):
    """``search_index_many`` (one commit for many conversations, bounded by a
    message budget) leaves the same index as indexing each alone."""
    for u in (ANN, BOB, CAL):
        repo.create_account(u, b"secret", b"profile")
    key = os.urandom(16)
    plan = plan_for(key)
    convs = [bytes([65 + k]) * 16 for k in range(6)]
    n = 0
    for round_ in range(3):
        batch = []
        for k, conv in enumerate(convs):
            n += 1
            batch.append(message(conv, (ANN, BOB), n, "ann", f"otter{k} round{round_} shared"))
        repo.write_batch(batch)
    left = repo.search_index_many([(c, plan) for c in convs], 4)  # 18 messages, 4 per transaction
    rounds = 1
    while left:
        assert rounds < 20
        left = repo.search_index_many([(c, plan) for c in left], 4)
        rounds += 1
    assert rounds >= 4  # the budget split the work
    assert repo.search_behind(convs) == []

    def found(conv: bytes, query: str) -> list[int]:
        return [s for s, _ in repo.search_conversation(conv, rules.tokens(key, rules.query_terms(query)), 100)]

    for k, conv in enumerate(convs):
        assert found(conv, "shared") == [3, 2, 1]
        assert found(conv, f"otter{k} round1") == [2]
        assert found(conv, f"otter{(k + 1) % 6}") == []


def test_conversation_rows_read_only_the_messages_since_a_count_whose_rows_did_not_change(repo):
    """The conversation list's notices count unread messages once: asked with
    what was counted (read mark, newest seq, fingerprint), the rows hold only
    the newer messages; a changed mark, a message taken back, a hole filled
    or removed, or more than the bound reads them all again."""
    for u in (ANN, BOB):
        repo.create_account(u, b"secret", b"profile")
    repo.write_batch([message(DIRECT, (ANN, BOB), n, "ann", f"m{n}") for n in range(1, 4)])

    def rows(limit: int = 1000, known=None):  # noqa: ANN001, ANN202
        return repo.conversation_rows(BOB, [DIRECT], 16, limit, known)[0]

    def known_of(r):  # noqa: ANN001, ANN202
        return {DIRECT: (r.read_seq, *r.counted)}

    first = rows()
    assert first.unread_after == 0 and [s for s, _, _ in first.unread] == [3, 2, 1] and first.counted[0] == 3
    repo.write_batch([message(DIRECT, (ANN, BOB), 4, "ann", "m4")])
    second = rows(known=known_of(first))
    assert second.unread_after == 3 and [s for s, _, _ in second.unread] == [4]
    assert second.counted == rows().counted  # the same as counting them all
    assert [s for s, _, _ in second.tail] == [4, 3, 2, 1]  # the newest are read as before

    repo.write_batch([message(DIRECT, (ANN, BOB), 5, "bob", "", KIND_RECALL, {"target": "2"})])
    assert rows(known=known_of(second)).unread_after == 0  # message 2 emptied: read again
    third = rows()
    repo.mark_read(BOB, DIRECT, 1)
    assert rows(known=known_of(third)).unread_after == 1  # the read mark moved: all after it
    fourth = rows()
    dedup = (3).to_bytes(16, "big")
    repo.undo_writes([(DIRECT, 3, dedup)], [])
    assert rows(known=known_of(fourth)).unread_after == 1  # a message gone from the middle
    fifth = rows()
    repo.write_batch([message(DIRECT, (ANN, BOB), n, "ann", f"m{n}") for n in range(6, 9)])
    bounded = rows(limit=5, known=known_of(fifth))
    assert bounded.unread_after == 1 and len(bounded.unread) == 5 and bounded.counted is None  # past the bound


def test_the_newest_rows_are_opened_only_until_one_is_enough(repo):
    """An entry shows its newest ordinary message: the newest rows are opened
    in turn until one is (``enough``); older ones come unopened."""
    for u in (ANN, BOB):
        repo.create_account(u, b"secret", b"profile")
    repo.write_batch([message(DIRECT, (ANN, BOB), n, "ann", f"m{n}") for n in range(1, 5)])
    repo.write_batch([message(DIRECT, (ANN, BOB), 5, "bob", "", KIND_RECALL, {"target": "2"})])
    opened: list[bytes] = []

    def enough(content: bytes) -> bool:
        opened.append(content)
        return unpack_content("", 0, 0, content).kind != KIND_RECALL

    r = repo.conversation_rows(BOB, [DIRECT], 16, 0, None, enough)[0]
    assert [s for s, _, _ in r.tail] == [5, 4, 3, 2, 1] and len(opened) == 2  # the recall, then message 4
    assert all(c for _, _, c in r.tail[:2]) and all(c == b"" for _, _, c in r.tail[2:])
    every = repo.conversation_rows(BOB, [DIRECT], 16, 0)[0]
    assert [bool(c) for _, _, c in every.tail] == [True, True, True, False, True]  # 2 was taken back
