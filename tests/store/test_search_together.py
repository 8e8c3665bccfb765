"""Indexing many conversations together (``search_index_many``, whose common
case runs a few statements for all of them) leaves the very index that
indexing each conversation alone (``search_index``) leaves, whatever the
writes in between: new conversations, edits, recalls, burns, messages taken
back and their seqs given again, and any budget."""

from __future__ import annotations

import os

from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from timpy.crypto.seal import Sealer
from timpy.im import kinds
from timpy.im.search import plan_for
from timpy.store import schema as s
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import (
    KIND_BURN,
    KIND_BURNED,
    KIND_EDIT,
    KIND_NORMAL,
    KIND_RECALL,
    pack_content,
)

ANN, BOB = b"a" * 16, b"b" * 16
CONVS = [bytes([65 + k]) * 16 for k in range(5)]
WORDS = ["otter", "seal", "whale", "krill", "tide", "reef"]
KEY = b"k" * 16

message = st.tuples(
    st.sampled_from([KIND_NORMAL] * 4 + [KIND_EDIT, KIND_RECALL, KIND_BURNED, KIND_BURN]),
    st.lists(st.sampled_from(WORDS), max_size=3),
    st.integers(1, 8),  # the target of an acting message: mostly one that is there
)
step = st.one_of(
    st.tuples(st.just("write"), st.lists(st.tuples(st.sampled_from(CONVS), message), min_size=1, max_size=8)),
    st.tuples(st.just("undo"), st.sampled_from(CONVS)),
    st.tuples(st.just("index"), st.integers(1, 30), st.lists(st.sampled_from(CONVS), min_size=1, max_size=6)),
)


def index_of(repo: Repository) -> tuple[list, list, list]:
    with repo.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            sorted(tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in r)
                   for r in conn.execute(select(*t.c)))
            for t in (s.search_docs, s.search_postings, s.search_heads)
        )


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=14))
@example(steps=[  # an indexed message recalled, another edited, in one round
    ("write", [(CONVS[0], (KIND_NORMAL, ["otter"], 1)), (CONVS[0], (KIND_NORMAL, ["seal"], 1))]),
    ("index", 5, [CONVS[0]]),
    ("write", [(CONVS[0], (KIND_RECALL, [], 1)), (CONVS[0], (KIND_EDIT, ["whale"], 2))]),
    ("index", 5, [CONVS[0]]),
])
def test_indexing_together_leaves_the_index_that_indexing_one_by_one_leaves(steps):
    alone, together = (Repository(sqlite_engine(None), Sealer(os.urandom(32)), kinds.effect_of) for _ in range(2))
    plan = plan_for(KEY)
    try:
        for r in (alone, together):
            r.create_schema()
            for u in (ANN, BOB):
                r.create_account(u, b"secret", b"profile")
        n = 0
        last: dict[bytes, tuple[int, bytes]] = {}
        for op, *args in steps:
            if op == "write":
                batch = []
                for conv, (kind, words, target) in args[0]:
                    n += 1
                    ext = {"target": str(target)} if kind in (KIND_EDIT, KIND_RECALL, KIND_BURNED) else {}
                    batch.append(NewMessage(conv, (ANN, BOB), ANN, n.to_bytes(16, "big"), 1000 + n,
                                            pack_content(f"c{n}", "ann", "bob", kind, " ".join(words).encode(), ext)))
                written = [r.write_batch(batch).appended for r in (alone, together)]
                assert [a.seq for a in written[0]] == [a.seq for a in written[1]]
                for item, a in zip(batch, written[0], strict=True):
                    last[item.conv_id] = (a.seq, item.dedup)
            elif op == "undo" and args[0] in last:  # a write that missed its quorum, after it was indexed
                seq, dedup = last.pop(args[0])
                for r in (alone, together):
                    r.undo_writes([(args[0], seq, dedup)], [])
            elif op == "index":
                budget, convs = args
                for conv in convs:
                    for _ in range(200):
                        if not alone.search_index(conv, plan, budget)[1]:
                            break
                left = together.search_index_many([(c, plan) for c in convs], budget)
                for _ in range(200):
                    if not left:
                        break
                    left = together.search_index_many([(c, plan) for c in left], budget)
                assert not left
                assert index_of(together) == index_of(alone)
        for conv in CONVS:
            assert alone.search_index(conv, plan, 10_000)[1] is False
        assert together.search_index_many([(c, plan) for c in CONVS], 10_000) == []
        assert index_of(together) == index_of(alone)
    finally:
        alone.close()
        together.close()
