"""Pure parts of the domain: names, rate limiting, sync merging."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import ids
from timpy.im.ratelimit import TokenBucket
from timpy.im.terminals import LiveTerminal
from timpy.wire.messages import ChatMessage, Delivery


@given(st.text(min_size=1, max_size=80))
def test_normalize_is_idempotent_or_refuses(name):
    try:
        n = ids.normalize_name(name)
    except RequestError as e:
        assert e.code == Code.INVALID_NAME
        return
    assert ids.normalize_name(n) == n
    assert 0 < len(n) <= ids.MAX_NAME


def test_names_fold_case_and_width():
    assert ids.normalize_name("Alice") == ids.normalize_name("ＡＬＩＣＥ") == "alice"
    for bad in ("", "a b", "a/b", "x" * 65, "drop;table"):
        with pytest.raises(RequestError):
            ids.normalize_name(bad)


def test_direct_conversation_is_symmetric():
    ix = BlindIndexer(bytes(32))
    a, b = ids.user_id(ix, "a"), ids.user_id(ix, "b")
    assert ids.direct_conversation(ix, a, b) == ids.direct_conversation(ix, b, a)
    assert ids.direct_conversation(ix, a, a) != ids.direct_conversation(ix, a, b)


def test_token_bucket():
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(b.take(0.0) for _ in range(5))
    assert not b.take(0.0)
    assert b.take(0.1)  # one token refilled after 100 ms
    assert not b.take(0.1)


@given(st.floats(0, 100), st.lists(st.floats(0, 1), max_size=50))
def test_token_bucket_never_exceeds_rate(rate, gaps):
    b = TokenBucket(rate=rate, burst=3, now=0.0)
    t, allowed = 0.0, 0
    for g in gaps:
        t += g
        allowed += b.take(t)
    assert allowed <= 3 + rate * t + 1e-6


class FakeLink:
    def __init__(self, room: int = 10_000) -> None:
        self.got: list[int] = []
        self.room = room
        self.closed: str | None = None

    def push_nowait(self, d: Delivery) -> bool:
        if len(self.got) >= self.room:
            return False
        self.got.append(d.pos)
        return True

    async def push(self, d: Delivery) -> None:
        self.got.append(d.pos)

    def close(self, reason: str, code: object = None) -> None:
        self.closed = reason


def _d(pos: int) -> Delivery:
    return Delivery(pos, ChatMessage("c", pos, "id", "a", "b", 0, b"", 0))


@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
def test_sync_merge_delivers_each_position_once_in_order(stored, held_from, extra):
    """Storage holds 1..stored when the sync reads it; live pushes held during
    the sync cover (h, stored+extra] with h <= stored, overlapping the read.
    The terminal must see 1..stored+extra, each once, ascending."""
    h = min(held_from, stored)
    link = FakeLink()
    t = LiveTerminal(b"u", b"d", "dev", link)
    t.begin_sync()
    for pos in range(h + 1, stored + extra + 1):
        t.deliver(_d(pos))
    assert link.got == []  # held back while syncing
    link.got.extend(range(1, stored + 1))  # the sync's read
    assert t.finish_sync(stored)
    assert link.got == list(range(1, stored + extra + 1))


def test_sync_overflow_asks_for_another_read():
    link = FakeLink()
    t = LiveTerminal(b"u", b"d", "dev", link, max_held=3)
    t.begin_sync()
    for pos in range(1, 6):
        t.deliver(_d(pos))
    assert not t.finish_sync(0)  # held ones were dropped: read again
    assert t.finish_sync(5)
    assert not t.syncing


def test_slow_terminal_is_closed_not_blocking():
    link = FakeLink(room=2)
    t = LiveTerminal(b"u", b"d", "dev", link)
    for pos in range(1, 4):
        t.deliver(_d(pos))
    assert link.got == [1, 2] and link.closed


def _page(held: list[int], before: int, after: int | None, limit: int) -> list[int]:
    """The model of a history read (``read_history``): oldest first, the
    oldest ``limit`` after ``after``, else the newest ``limit`` below ``before`` (0 = all)."""
    if after is not None:
        return [s for s in held if s > after][:limit]
    below = [s for s in held if before <= 0 or s < before]
    return below[len(below) - limit:] if len(below) > limit else below


@given(
    st.integers(1, 40), st.data(), st.integers(1, 12), st.one_of(st.none(), st.integers(0, 45)), st.integers(0, 45)
)
def test_a_replica_page_is_shown_only_when_it_is_the_owners_up_to_the_replicas_head(n, data, limit, after, before):
    """``copy_page_is_whole`` against the owner's copy 1..n: a replica
    holding any subset passes a page only if that page and the row beyond
    it are the owner's as far as the replica's head (a replica may be
    behind, never show a hole); a replica holding 1..h always passes."""
    from timpy.im.messaging import copy_page_is_whole

    held = sorted(data.draw(st.sets(st.integers(1, n), min_size=1)))
    head = held[-1]
    owner = list(range(1, head + 1))  # the owner's copy, as far as this replica's head
    got = _page(held, before, after, limit + 1)
    whole = copy_page_is_whole(got, head, before, after, limit)
    if whole:
        assert got == _page(owner, before, after, limit + 1)
    if held == owner:
        assert whole


@given(st.integers(1, 30), st.data(), st.integers(1, 8), st.one_of(st.none(), st.integers(0, 32)), st.integers(0, 32))
def test_replica_copies_merged_show_the_acknowledged_rows_or_nothing(n, data, limit, after, before):
    """``merge_copies``: the acknowledged rows are 1..n (stamp 5 each), each
    held by at least one of two replicas (W = 2 of R = 3, the owner silent);
    a replica may also hold, at any slot, an undone row of a lower stamp. The
    merged page is the acknowledged page, or None when the merged rows show a
    hole (never a row of a lower stamp where an acknowledged one is)."""
    from timpy.cluster import catalog as ops
    from timpy.im.messaging import merge_copies

    owner = list(range(1, n + 1))
    in_a = data.draw(st.sets(st.sampled_from(owner)))
    in_b = set(owner) - in_a | data.draw(st.sets(st.sampled_from(owner)))
    undone = data.draw(st.sets(st.integers(1, n + 2)))  # lower-stamped rows the undo missed, on replica a

    def row(seq: int, stamp: int) -> ops.StampedRow:
        return ops.StampedRow(seq, seq, b"ack %d" % seq if stamp == 5 else b"undone", stamp)

    def copy(held: dict[int, int]) -> ops.HistoryCopy:
        seqs = _page(sorted(held), before, after, limit + 1)
        return ops.HistoryCopy(True, [row(q, held[q]) for q in seqs], max(held, default=0))

    a = {q: 5 for q in in_a} | {q: 4 for q in undone if q not in in_a}
    b = {q: 5 for q in in_b}
    merged = merge_copies([copy(a), copy(b)], before, after, limit)
    if merged is None:
        return
    rows, _more = merged
    for r in rows:
        if r.seq <= n:
            assert r.content == b"ack %d" % r.seq  # the acknowledged value wherever there is one
    acked = [r.seq for r in rows if r.seq <= n]
    assert acked == [q for q in _page(owner + sorted(q for q in undone if q > n), before, after, limit) if q <= n]


def test_replica_copies_merged_refuse_a_hole():
    from timpy.cluster import catalog as ops
    from timpy.im.messaging import merge_copies

    def copy(seqs: list[int]) -> ops.HistoryCopy:
        return ops.HistoryCopy(True, [ops.StampedRow(q, q, b"m", 1) for q in seqs], max(seqs))

    assert merge_copies([copy([1, 2, 4]), copy([1, 2])], 0, None, 10) is None
    rows, more = merge_copies([copy([1, 2, 4]), copy([1, 3])], 0, None, 2)
    assert [r.seq for r in rows] == [3, 4] and more
