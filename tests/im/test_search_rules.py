"""The search rules (pure) and the blind index in the store, checked against
the plaintext rule ``search_rules.matches`` as the model."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from timpy.crypto.seal import Sealer
from timpy.im import kinds
from timpy.im import search_rules as rules
from timpy.im.search import plan_for
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import KIND_EDIT, KIND_NORMAL, KIND_RECALL, pack_content

# Words that exercise prefixes, long words, case, NFKC (the ligature "ﬁ", full-width
# letters), casefolding ("Straße") and non-Latin scripts.
VOCABULARY = ["a", "an", "ant", "antelope", "antelopes", "ANTELOPE", "harbour", "harbourmaster", "ﬁsh", "fish",
              "Straße", "strasse", "ｆｕｌｌ", "full", "café", "cafe", "日本語", "日本", "x1", "x12345678901"]
word = st.sampled_from(VOCABULARY)
text = st.lists(word, min_size=0, max_size=8).flatmap(
    lambda ws: st.sampled_from([" ", ", ", "!?", "\n", "-"]).map(lambda sep: sep.join(ws)))


@given(text, st.lists(word, min_size=1, max_size=3).map(" ".join))
def test_terms_agree_with_the_plaintext_rule(body, query):
    assert (set(rules.query_terms(query)) <= rules.body_terms(body)) == rules.matches(query, body)


@given(st.text(max_size=40))
def test_terms_are_bounded_and_never_the_whole_text(body):
    for term in rules.body_terms(body):
        kind, _, w = term.partition(":")
        assert (kind == "p" and len(w) <= rules.MAX_PREFIX) or (kind == "w" and rules.MAX_PREFIX < len(w) <= rules.MAX_WORD)


def test_normalization_and_splitting():
    assert rules.words("Héllo, WORLD! ﬁne-tuned ｆｕｌｌ Straße") == ["héllo", "world", "fine", "tuned", "full", "strasse"]
    assert rules.query_terms("Harbour harbour HARBOURMASTER") == ["p:harbour", "w:harbourmaster"]
    for bad in ("", "  ,;!  ", " ".join(f"w{i}" for i in range(rules.MAX_QUERY_WORDS + 1))):
        try:
            rules.query_terms(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), word)
def test_equal_words_in_two_conversations_give_unrelated_tokens(k1, k2, w):
    term = rules.query_terms(w)[0]
    assert len(rules.token(k1, term)) == rules.TOKEN_SIZE
    assert (rules.token(k1, term) == rules.token(k2, term)) == (k1 == k2)


# --- the index in the store against the model ------------------------------------------

op = st.one_of(
    st.tuples(st.just("send"), text),
    st.tuples(st.just("edit"), st.integers(0, 20), text),
    st.tuples(st.just("recall"), st.integers(0, 20)),
    st.tuples(st.just("index")),
    st.tuples(st.just("undo")),  # the newest message, a send, taken back (its write missed its quorum)
)

ALICE, BOB, CONV = b"a" * 16, b"b" * 16, b"c" * 16


def indexed_repository() -> tuple[Repository, bytes, object]:
    """A fresh store with ALICE and BOB, a conversation token key and its index plan."""
    repo = Repository(sqlite_engine(None), Sealer(os.urandom(32)), kinds.effect_of)
    repo.create_schema()
    for u in (ALICE, BOB):
        repo.create_account(u, b"secret", b"profile")
    key = os.urandom(16)
    return repo, key, plan_for(key)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=25), st.lists(word, min_size=1, max_size=2).map(" ".join))
def test_the_index_follows_sends_edits_recalls_and_undone_sends(ops, query):
    repo, key, plan = indexed_repository()
    bodies: dict[int, str] = {}  # the model: seq -> current body of a shown message
    sent: list[int] = []
    n = 0
    last: tuple[int, bytes, bool] | None = None  # the newest message: seq, dedup, a send

    def store(kind: int, body: str, ext: dict[str, str]) -> int:
        nonlocal n
        n += 1
        nonlocal last
        new = NewMessage(CONV, (ALICE, BOB), ALICE, n.to_bytes(16, "big"), n,
                         pack_content(f"c{n}", "alice", "bob", kind, body.encode(), ext))
        seq = repo.write_batch([new]).appended[0].seq
        last = (seq, new.dedup, kind == KIND_NORMAL)
        return seq

    for o in ops:
        if o[0] == "send":
            seq = store(KIND_NORMAL, o[1], {})
            bodies[seq] = o[1]
            sent.append(seq)
        elif o[0] == "edit" and sent:
            target = sent[o[1] % len(sent)]
            store(KIND_EDIT, o[2], {"target": str(target), "at": "1"})
            if target in bodies:
                bodies[target] = o[2]
        elif o[0] == "recall" and sent:
            target = sent[o[1] % len(sent)]
            store(KIND_RECALL, "", {"target": str(target)})
            bodies.pop(target, None)
        elif o[0] == "index":
            repo.search_index(CONV, plan, 3)
        elif o[0] == "undo" and last is not None and last[2]:
            # its seq is given again to the next message: the index must not keep the old words there
            repo.undo_writes([(CONV, last[0], last[1])], [])
            bodies.pop(last[0], None)
            sent.remove(last[0])
            last = None
    more = True
    while more:
        _, more = repo.search_index(CONV, plan, 4)
    found = [seq for seq, _ in repo.search_conversation(CONV, rules.tokens(key, rules.query_terms(query)), 1000)]
    assert found == sorted((s for s, b in bodies.items() if rules.matches(query, b)), reverse=True)
    assert repo.search_behind([CONV]) == []


def test_an_indexed_send_taken_back_leaves_no_words_at_its_seq():
    repo, key, plan = indexed_repository()

    def store(n: int, body: str) -> tuple[int, bytes]:
        new = NewMessage(CONV, (ALICE, BOB), ALICE, n.to_bytes(16, "big"), n,
                         pack_content(f"c{n}", "alice", "bob", KIND_NORMAL, body.encode(), {}))
        return repo.write_batch([new]).appended[0].seq, new.dedup

    def found(query: str) -> list[int]:
        return [q for q, _ in repo.search_conversation(CONV, rules.tokens(key, rules.query_terms(query)), 100)]

    store(1, "hello there")
    seq, dedup = store(2, "apple pie")
    repo.search_index(CONV, plan, 10)
    assert found("apple") == [2]
    repo.undo_writes([(CONV, seq, dedup)], [])  # never acknowledged: seq 2 is given again
    assert store(3, "banana split") == (2, (3).to_bytes(16, "big"))
    repo.search_index(CONV, plan, 10)
    assert found("apple") == [] and found("banana") == [2] and found("hello") == [1]
    assert repo.search_behind([CONV]) == []
