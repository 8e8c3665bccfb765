"""Storage of the search index: blind tokens per message, next to the
conversation's messages (its owner and replicas, or its backend). A mixin of
``Repository``; the sharded one routes each call to the conversation's backend.

The index is derived from the message rows: ``search_index`` reads the
messages after the conversation's index head, in sequence order, and asks
``plan`` (the im layer's rules, holding the conversation's token key) what
each one does: index its tokens, drop a target's tokens (recall, burned), or
index a target again (edit: the target row holds the new body already).
Because acting messages come after their targets, applying them in order
leaves the index equal to what the current rows say, wherever it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, func, select

from timpy.store import schema as s
from timpy.store.features.base import (
    CopiedTable,
    StoreBase,
    driver_first,
    driver_in,
    driver_many,
    driver_rows,
)
from timpy.store.rows import Row

TOKEN_SIZE = 8  # bytes of a token (``search_rules.TOKEN_SIZE``)
TOGETHER_MAX = 16  # messages after a conversation's head that ``search_index_many`` indexes with the others
REWIND = 1024  # messages indexed again when the head's message was replaced (more than a writer batch)

#: What a message (its opened content; empty when gone) does to the index:
#: ("index", 0, tokens), ("drop", target seq, []), ("reindex", target seq, []) or ("skip", 0, []).
IndexPlan = Callable[[bytes], "tuple[str, int, list[bytes]]"]


class SearchProtocol(Protocol):
    def search_behind(self, conv_ids: Sequence[bytes]) -> list[bytes]: ...

    def search_index(self, conv_id: bytes, plan: IndexPlan, limit: int) -> tuple[int, bool]: ...

    def search_index_many(self, wanted: Sequence[tuple[bytes, IndexPlan]], limit: int) -> list[bytes]: ...

    def search_conversation(self, conv_id: bytes, tokens: Sequence[bytes], cap: int) -> list[tuple[int, int]]: ...

    def search_conversations(
        self, wanted: Sequence[tuple[bytes, Sequence[bytes]]], cap: int
    ) -> list[tuple[bytes, int, int]]: ...

    def search_members(self, user_id: bytes, conv_ids: Sequence[bytes]) -> set[bytes]: ...

    def search_size(self) -> tuple[int, int]: ...


class SearchStore(StoreBase):
    def search_behind(self, conv_ids: Sequence[bytes]) -> list[bytes]:
        """Of ``conv_ids``, those with messages after their index head, or
        whose head message is not the one indexed any more."""
        if not conv_ids:
            return []
        keys = list(conv_ids)
        tops: dict[bytes, int] = {}
        heads: dict[bytes, int] = {}
        with self.engine.connect() as conn:  # fixed SQL: run after every writer batch under load
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                for conv, top in driver_in(conn, "SELECT conv_id, MAX(seq) FROM messages WHERE conv_id IN", chunk,
                                           "GROUP BY conv_id"):
                    tops[bytes(conv)] = int(top)
                for conv, seq, dedup, now in driver_in(
                    conn, "SELECT h.conv_id, h.seq, h.dedup, m.dedup FROM search_heads h LEFT JOIN messages m"
                          " ON m.conv_id = h.conv_id AND m.seq = h.seq WHERE h.conv_id IN", chunk,
                ):
                    same = now is not None and bytes(now) == bytes(dedup)
                    heads[bytes(conv)] = int(seq) if same or int(seq) == 0 else -1
        return [k for k in keys if tops.get(k, 0) > heads.get(k, 0) or heads.get(k) == -1]

    def search_index(self, conv_id: bytes, plan: IndexPlan, limit: int) -> tuple[int, bool]:
        """Index up to ``limit`` messages after the head, in one transaction;
        returns (the new head, whether messages are left after it)."""
        with self.engine.begin() as conn:
            head, more, _ = self._index_one(conn, conv_id, plan, limit)
        return head, more

    def search_index_many(self, wanted: Sequence[tuple[bytes, IndexPlan]], limit: int) -> list[bytes]:
        """Index the messages after the head of each conversation of
        ``wanted``, in one transaction (one commit for many conversations: a
        flood of 1:1 messages touches thousands, and a commit each cost a
        tenth of the store thread), up to about ``limit`` messages in all.
        Returns the conversations with messages left to index."""
        left: list[bytes] = []
        budget = limit
        with self.engine.begin() as conn:
            wanted, read = self._index_together(conn, wanted, limit)
            budget -= read
            for n, (conv_id, plan) in enumerate(wanted):
                if budget <= 0:
                    left += [c for c, _ in wanted[n:]]
                    break
                _, more, read = self._index_one(conn, conv_id, plan, budget)
                if more:
                    left.append(conv_id)
                budget -= max(1, read)
        return left

    def _index_together(
        self, conn: Any, wanted: Sequence[tuple[bytes, IndexPlan]], limit: int,
    ) -> tuple[list[tuple[bytes, IndexPlan]], int]:
        """The common case of ``search_index_many``, for many conversations in
        a few statements: a head whose message is still the one indexed, at
        most ``TOGETHER_MAX`` messages after it, each one to index or to skip.
        Under a flood of 1:1 messages each conversation gets a message or two
        between two rounds, and six statements a conversation
        (``_index_one``) were most of indexing's cost. Returns the
        conversations left to ``_index_one`` (anything else: a head to
        rewind, an edit, recall or burn to apply, a long way behind), in
        their order, and the messages read here, at most ``limit``."""
        if not wanted or limit <= 0:
            return list(wanted), 0
        convs = list(dict.fromkeys(c for c, _ in wanted))
        heads: dict[bytes, tuple[int, bytes]] = {}
        at_head: dict[bytes, bytes] = {}
        tops: dict[bytes, int] = {}
        for start in range(0, len(convs), 500):
            chunk = convs[start:start + 500]
            for conv, seq, dedup in driver_in(conn, "SELECT conv_id, seq, dedup FROM search_heads WHERE conv_id IN",
                                              chunk, lock=True):
                heads[bytes(conv)] = (int(seq), bytes(dedup))
            for conv, dedup in driver_in(conn, "SELECT h.conv_id, m.dedup FROM search_heads h JOIN messages m"
                                               " ON m.conv_id = h.conv_id AND m.seq = h.seq WHERE h.conv_id IN", chunk):
                at_head[bytes(conv)] = bytes(dedup)
            for conv, top in driver_in(conn, "SELECT conv_id, MAX(seq) FROM messages WHERE conv_id IN", chunk,
                                       "GROUP BY conv_id"):
                tops[bytes(conv)] = int(top)
        quick: list[bytes] = []
        done: set[bytes] = set()
        room = limit
        for conv in convs:
            seq, dedup = heads.get(conv, (0, b""))
            behind = tops.get(conv, 0) - seq
            if seq and at_head.get(conv) != dedup:
                continue  # the head's message was replaced: rewound one by one
            if behind <= 0:
                done.add(conv)  # nothing after the head
            elif behind <= min(TOGETHER_MAX, room):
                quick.append(conv)
                room -= behind
        rows: dict[bytes, list[tuple[Any, ...]]] = {c: [] for c in quick}
        # Each conversation's rows after its head, each found from the
        # primary key: with a long history a join on the head scanned every
        # message of each conversation (reading their rows' pages, cold) to
        # keep the few after it.
        for start in range(0, len(quick), 100):
            chunk = quick[start:start + 100]
            args: list[Any] = []
            for conv in chunk:
                args += (conv, heads.get(conv, (0, b""))[0])
            for conv, seq, dedup, content in driver_rows(
                conn,
                "SELECT conv_id, seq, dedup, content FROM messages WHERE "
                + " OR ".join(["(conv_id = ? AND seq > ?)"] * len(chunk)) + " ORDER BY conv_id, seq",
                args,
            ):
                rows[bytes(conv)].append((int(seq), bytes(dedup), content))
        plans = dict(wanted)
        read = 0
        docs: list[tuple[bytes, int, bytes]] = []
        postings: list[tuple[bytes, bytes, int]] = []
        new_heads: list[tuple[bytes, int, bytes]] = []
        moved_heads: list[tuple[int, bytes, bytes, int]] = []
        for conv in quick:
            stored, _ = heads.get(conv, (0, b""))
            head, head_dedup = stored, b""
            fresh: dict[int, list[bytes]] = {}
            usual = True
            for seq, dedup, content in rows[conv][:TOGETHER_MAX]:
                if seq != head + 1:
                    break  # a gap (a row not copied here yet): indexed when it is
                action, _target, tokens = plans[conv](self._open_message(conv, seq, bytes(content)))
                if action == "index":
                    if tokens:
                        fresh[seq] = tokens
                elif action != "skip":
                    usual = False  # acts on an earlier message: one by one
                    break
                head, head_dedup = seq, dedup
            if not usual:
                continue
            done.add(conv)
            read += len(rows[conv])
            for q, t in fresh.items():
                toks = sorted(set(t))
                docs.append((conv, q, b"".join(toks)))
                postings += [(conv, tok, q) for tok in toks]
            if head != stored:
                if conv in heads:
                    moved_heads.append((head, head_dedup, conv, stored))
                else:
                    new_heads.append((conv, head, head_dedup))
        _many(conn, "INSERT INTO search_docs (conv_id, seq, tokens) VALUES (?, ?, ?)", docs)
        _many(conn, "INSERT INTO search_postings (conv_id, token, seq) VALUES (?, ?, ?)", postings)
        _many(conn, "INSERT INTO search_heads (conv_id, seq, dedup) VALUES (?, ?, ?)", new_heads)
        _many(conn, "UPDATE search_heads SET seq = ?, dedup = ? WHERE conv_id = ? AND seq = ?", moved_heads)
        return [(c, p) for c, p in wanted if c not in done], read

    def _index_one(self, conn: Any, conv_id: bytes, plan: IndexPlan, limit: int) -> tuple[int, bool, int]:
        """Index up to ``limit`` messages after the head, in ``conn``'s
        transaction: (the new head, whether messages are left, messages read).

        Run for about every message under a flood of 1:1 messages (each
        conversation gets one or two between two rounds), so its statements
        are fixed SQL through the DB-API: built through SQLAlchemy they took
        a third of the node's CPU once the commits were shared."""
        lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
        row = _one(conn, "SELECT seq, dedup FROM search_heads WHERE conv_id = ?" + lock, (conv_id,))
        stored = 0 if row is None else int(row[0])
        head, head_dedup = stored, b"" if row is None else bytes(row[1])
        if head:
            now = _one(conn, _DEDUP_AT, (conv_id, head))
            if now is None or bytes(now[0]) != head_dedup:
                # The head's message was taken back (a write that missed its
                # quorum after it was indexed) and its seq given again: index
                # again from before the batch it was in.
                head, head_dedup = max(0, head - REWIND), b""
                if head:
                    back = _one(conn, _DEDUP_AT, (conv_id, head))
                    head_dedup = b"" if back is None else bytes(back[0])
        rows = _all(conn, "SELECT seq, dedup, content FROM messages WHERE conv_id = ? AND seq > ?"
                          " ORDER BY seq ASC LIMIT ?", (conv_id, head, limit + 1))
        if head != stored:
            # Rewound: the tokens of positions past the new head were indexed
            # before it. (Without a rewind there are none: a round stores
            # tokens only up to the head it stores, in one transaction, and
            # ``forget`` drops a conversation's index with its head.)
            self._drop_docs(conn, conv_id, after=head)
        start = head
        fresh: dict[int, list[bytes]] = {}  # seq -> tokens, stored at the end
        for r_seq, r_dedup, r_content in rows[:limit]:
            seq = int(r_seq)
            if seq != head + 1:
                break  # a gap (a row not copied here yet): index it when it is
            action, target, tokens = plan(self._open_message(conv_id, seq, bytes(r_content)))
            if action == "index" and tokens:
                fresh[seq] = tokens
            elif action in ("drop", "reindex") and 0 < target < seq:
                if fresh.pop(target, None) is None:
                    self._drop_docs(conn, conv_id, only=target)
                if action == "reindex":
                    old = _one(conn, "SELECT content FROM messages WHERE conv_id = ? AND seq = ?", (conv_id, target))
                    if old is not None:
                        again, _, new = plan(self._open_message(conv_id, target, bytes(old[0])))
                        if again == "index" and new:
                            fresh[target] = new
            head, head_dedup = seq, bytes(r_dedup)
        if fresh:
            _many(conn, "INSERT INTO search_docs (conv_id, seq, tokens) VALUES (?, ?, ?)",
                  [(conv_id, q, b"".join(sorted(set(t)))) for q, t in fresh.items()])
            _many(conn, "INSERT INTO search_postings (conv_id, token, seq) VALUES (?, ?, ?)",
                  [(conv_id, tok, q) for q, t in fresh.items() for tok in sorted(set(t))])
        if row is None:
            if head:
                _many(conn, "INSERT INTO search_heads (conv_id, seq, dedup) VALUES (?, ?, ?)",
                      [(conv_id, head, head_dedup)])
        elif head != stored or head_dedup != bytes(row[1]):
            _many(conn, "UPDATE search_heads SET seq = ?, dedup = ? WHERE conv_id = ? AND seq = ?",
                  [(head, head_dedup, conv_id, stored)])
        more = len(rows) > limit and head - start == limit
        return head, more, len(rows[:limit])

    @staticmethod
    def _drop_docs(conn: Any, conv_id: bytes, after: int | None = None, only: int | None = None) -> None:
        """Take the tokens of indexed messages out: one (``only``), or all after a seq."""
        if only is not None:
            found = _all(conn, "SELECT seq, tokens FROM search_docs WHERE conv_id = ? AND seq = ?", (conv_id, only))
        else:
            found = _all(conn, "SELECT seq, tokens FROM search_docs WHERE conv_id = ? AND seq > ?",
                         (conv_id, after or 0))
        docs = [(int(q), bytes(toks)) for q, toks in found]
        if not docs:
            return
        size = TOKEN_SIZE
        _many(conn, "DELETE FROM search_postings WHERE conv_id = ? AND token = ? AND seq = ?",
              [(conv_id, toks[i:i + size], q) for q, toks in docs for i in range(0, len(toks), size)])
        _many(conn, "DELETE FROM search_docs WHERE conv_id = ? AND seq = ?", [(conv_id, q) for q, _ in docs])

    def search_conversation(self, conv_id: bytes, tokens: Sequence[bytes], cap: int) -> list[tuple[int, int]]:
        """Messages of a conversation holding every token (and not gone):
        (seq, ms), newest first, at most ``cap``."""
        p, m = s.search_postings, s.messages
        wanted = sorted(set(tokens))
        if not wanted:
            return []
        q = (
            select(p.c.seq, m.c.created_ms)
            .select_from(p.join(m, and_(m.c.conv_id == p.c.conv_id, m.c.seq == p.c.seq)))
            .where(and_(p.c.conv_id == conv_id, p.c.token.in_(wanted), func.length(m.c.content) > 0))
            .group_by(p.c.seq, m.c.created_ms)
            .having(func.count() == len(wanted))
            .order_by(p.c.seq.desc())
            .limit(cap)
        )
        with self.engine.connect() as conn:
            return [(int(r.seq), int(r.created_ms)) for r in conn.execute(q)]

    def search_conversations(
        self, wanted: Sequence[tuple[bytes, Sequence[bytes]]], cap: int
    ) -> list[tuple[bytes, int, int]]:
        """``search_conversation`` for many conversations at once, each with its
        own tokens (the same number for all: one per query term): (conv, seq,
        ms), newest first, at most ``cap`` in all. One statement per 100
        conversations."""
        p, m = s.search_postings, s.messages
        out: list[tuple[bytes, int, int]] = []
        items = [(bytes(c), sorted(set(t))) for c, t in wanted if t]
        with self.engine.connect() as conn:
            for start in range(0, len(items), 100):
                chunk = items[start:start + 100]
                sizes = {len(t) for _, t in chunk}
                for size in sizes:
                    part = [(c, t) for c, t in chunk if len(t) == size]
                    q = (
                        select(p.c.conv_id, p.c.seq, m.c.created_ms)
                        .select_from(p.join(m, and_(m.c.conv_id == p.c.conv_id, m.c.seq == p.c.seq)))
                        .where(and_(p.c.conv_id.in_([c for c, _ in part]),
                                    p.c.token.in_(sorted({x for _, t in part for x in t})),
                                    func.length(m.c.content) > 0))
                        .group_by(p.c.conv_id, p.c.seq, m.c.created_ms)
                        .having(func.count() == size)
                        .order_by(m.c.created_ms.desc(), p.c.seq.desc())
                        .limit(cap)
                    )
                    out += [(bytes(r.conv_id), int(r.seq), int(r.created_ms)) for r in conn.execute(q)]
        out.sort(key=lambda h: (-h[2], h[0], -h[1]))
        return out[:cap]

    def search_members(self, user_id: bytes, conv_ids: Sequence[bytes]) -> set[bytes]:
        """Of ``conv_ids``, those the user is a member of."""
        cm = s.conv_members
        if not conv_ids:
            return set()
        with self.engine.connect() as conn:
            return {
                bytes(r.conv_id)
                for r in conn.execute(select(cm.c.conv_id).where(and_(cm.c.user_id == user_id,
                                                                      cm.c.conv_id.in_(list(conv_ids)))))
            }

    def search_size(self) -> tuple[int, int]:
        """(tokens stored, conversations indexed): for the benchmark and operators."""
        with self.engine.connect() as conn:
            postings = conn.execute(select(func.count()).select_from(s.search_postings)).scalar_one()
            heads = conn.execute(select(func.count()).select_from(s.search_heads)).scalar_one()
        return int(postings), int(heads)


def _many(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        driver_many(conn, sql, rows)


_all = driver_rows
_one = driver_first


_DEDUP_AT = "SELECT dedup FROM messages WHERE conv_id = ? AND seq = ?"


class SearchIndexTable(CopiedTable):
    """The search index belongs to its conversation (it is deleted with the
    conversation's other rows when the conversation moves away) but is never
    copied, digested or verified: it is derived from the message rows, and
    whichever node or backend holds the conversation builds its own
    (``search_behind`` finds what it lacks; a search catches up first).
    Copying it would carry about 25 times the rows of the messages."""

    name, wire, table, key_column, kinds = "search", 8, s.search_heads, "conv_id", ("conv",)
    also = (s.search_postings, s.search_docs)
    columns = "none: rebuilt from the messages where the conversation is held"
    derived = True

    def unpack(self, raw: Any) -> Row:
        raise ValueError("the search index is not copied")

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        if rows:
            raise ValueError("the search index is not copied: it is rebuilt from the messages")
        return 0

    def forget(self, conn: Any, kind: str, keys: list[bytes]) -> int:
        deleted = 0
        for table in (s.search_postings, s.search_docs, s.search_heads):
            deleted += int(conn.execute(table.delete().where(table.c.conv_id.in_(keys))).rowcount)
        return deleted


SEARCH_INDEX = SearchIndexTable()


class ShardedSearchStore:
    """The same calls on ``ShardedRepository``: each to the conversation's backend."""

    map: Any
    names: Any
    _on: Any

    def search_behind(self, conv_ids: Sequence[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for name, keys in _by_place(conv_ids, self.map.place).items():
            out += self._on(name, SearchStore.search_behind, keys)
        return out

    def search_index(self, conv_id: bytes, plan: IndexPlan, limit: int) -> tuple[int, bool]:
        return self._on(self.map.place(conv_id), SearchStore.search_index, conv_id, plan, limit)

    def search_index_many(self, wanted: Sequence[tuple[bytes, IndexPlan]], limit: int) -> list[bytes]:
        plans = dict(wanted)
        left: list[bytes] = []
        for name, keys in _by_place([c for c, _ in wanted], self.map.place).items():
            left += self._on(name, SearchStore.search_index_many, [(k, plans[k]) for k in keys], limit)
        return left

    def search_conversation(self, conv_id: bytes, tokens: Sequence[bytes], cap: int) -> list[tuple[int, int]]:
        return self._on(self.map.place(conv_id), SearchStore.search_conversation, conv_id, tokens, cap)

    def search_conversations(
        self, wanted: Sequence[tuple[bytes, Sequence[bytes]]], cap: int
    ) -> list[tuple[bytes, int, int]]:
        out: list[tuple[bytes, int, int]] = []
        for name, keys in _by_place([c for c, _ in wanted], self.map.place).items():
            mine = set(keys)
            out += self._on(name, SearchStore.search_conversations, [w for w in wanted if w[0] in mine], cap)
        out.sort(key=lambda h: (-h[2], h[0], -h[1]))
        return out[:cap]

    def search_members(self, user_id: bytes, conv_ids: Sequence[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        for name, keys in _by_place(conv_ids, self.map.place).items():
            out |= self._on(name, SearchStore.search_members, user_id, keys)
        return out

    def search_size(self) -> tuple[int, int]:
        sizes = [self._on(name, SearchStore.search_size) for name in self.names]
        return sum(a for a, _ in sizes), sum(b for _, b in sizes)


def _by_place(keys: Sequence[bytes], place: Callable[[bytes], str]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for k in keys:
        out.setdefault(place(k), []).append(k)
    return out
