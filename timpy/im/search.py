"""Search over the bodies of a user's conversations, with no word stored.

The index lives with each conversation (its owner and replicas in embedded
mode, its backend in shared-backend mode): blind tokens of the words of each
message (``search_rules``), keyed per conversation. The owner indexes the
messages its writer stored right after the commit (``committed``), in the
background; a search first brings the index of every conversation it reads
up to date, so a result never lags behind a recall, an edit or a burn.

A search names one conversation, or none (then every conversation in the
user's list). The node that serves the client finds the conversations (at
the user's owner), groups them by owner, and asks each owner once for the
messages holding every token of the query; each owner checks membership.
Only tokens travel between nodes, never the query's words. Results are
(conversation, seq, time), newest first, with their count.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

import msgpack
import trio

from timpy.cluster import catalog as ops
from timpy.cluster.rpc import NotOwner
from timpy.concurrency import yield_share
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids
from timpy.im import search_rules as rules
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.users import Identity
from timpy.im.writer import Committed
from timpy.store.features.search import IndexPlan
from timpy.store.repository import Store
from timpy.wire.messages import KIND_BURNED, KIND_EDIT, KIND_NORMAL, KIND_RECALL

log = logging.getLogger("timpy.search")

INDEX_BATCH = 500  # messages indexed per transaction (of one conversation or of several)
INDEX_SHARE = 0.25  # at most this share of the time goes to indexing in the background
INDEX_PAUSE_MAX = 5.0  # seconds: the longest pause between two rounds of background indexing
MAX_HITS = 10_000  # a search counts at most this many hits
PAGE_MAX = 200


def plan_for(conversation_key: bytes) -> IndexPlan:
    """What each message of one conversation does to its index."""

    def plan(content: bytes) -> tuple[str, int, list[bytes]]:
        if not content:
            return "skip", 0, []  # recalled or burned already
        try:
            f = msgpack.unpackb(content, raw=False)
            kind, body, ext = int(f[4]), bytes(f[5]), dict(f[6])
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            return "skip", 0, []
        if kind in (KIND_RECALL, KIND_BURNED, KIND_EDIT):
            raw = str(ext.get("target", ""))
            if not raw.isdigit():
                return "skip", 0, []
            return ("reindex" if kind == KIND_EDIT else "drop"), int(raw), []
        if kind != KIND_NORMAL:
            return "skip", 0, []  # burn-after-reading is never indexed; custom kinds are opaque
        text = rules.body_text(body)
        if text is None:
            return "skip", 0, []
        return "index", 0, rules.tokens(conversation_key, rules.body_terms(text))

    return plan


def token_key(indexer: BlindIndexer, conv_id: bytes) -> bytes:
    """A conversation's own token key (``Search.conversation_key``, which keeps them)."""
    return indexer.index("search-conversation", conv_id)


class Search:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, replicator: Replicator,
        conversations_of: Callable[[Identity], Awaitable[list[bytes]]], spawn: Callable[..., bool],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._replicator = replicator
        self._conversations_of = conversations_of  # what a user may search (the conversation list)
        self._spawn = spawn
        self._lock = trio.Lock()  # one indexing at a time on this node
        self._dirty: set[bytes] = set()
        self._flushing = False
        self.indexed = 0  # index transactions run (tests, metrics)
        peers.serve(ops.SEARCH_CONVS, self._on_search)

    def conversation_key(self, conv_id: bytes) -> bytes:
        """The conversation's own token key: keyed BLAKE2b (the cluster's blind-index key) of its id
        (kept: indexing after every writer batch asks for thousands)."""
        return self._indexer.kept(("search-conversation", conv_id), lambda: token_key(self._indexer, conv_id))

    # --- indexing -------------------------------------------------------------

    def committed(self, committed: Sequence[Committed]) -> None:
        """The writer's listener: messages numbered here (this node owns their
        conversations) are indexed soon, in the background."""
        self.index_soon({c.message.conversation for c in committed if c.numbered_here})

    def index_soon(self, conversations: Iterable[str]) -> None:
        """Index these conversations (text ids) in the background, coalesced."""
        conv_ids = [ids.parse_conversation(c) for c in conversations]
        if not conv_ids:
            return
        self._dirty.update(conv_ids)
        if not self._flushing and self._spawn(self._flush):
            self._flushing = True

    async def _flush(self) -> None:
        try:
            while self._dirty:
                convs, self._dirty = sorted(self._dirty), set()
                started = trio.current_time()
                try:
                    await self.bring_up_to_date(convs)
                except TimpyError as exc:
                    log.info("indexing for search was put off: %s", exc.text)
                    return  # the next search or commit brings it up to date
                except Exception:  # a bug must not end the node's background tasks; searches catch up themselves
                    log.exception("indexing for search failed")
                    return
                # Background work: it takes at most INDEX_SHARE of the time
                # (the store thread's included, which the writer needs), so
                # under a flood the index falls behind and catches up after;
                # a search first indexes what it reads (``search``).
                await yield_share(started, INDEX_SHARE, INDEX_PAUSE_MAX)
        finally:
            self._flushing = False

    async def bring_up_to_date(self, conv_ids: list[bytes]) -> None:
        """Index every message of these conversations stored here and not indexed yet."""
        async with self._lock:
            behind = await self._store.run(self._store.repo.search_behind, conv_ids)
            # A flood of 1:1 messages leaves thousands of conversations behind
            # with a message or two each: each round hands the store one chunk
            # of them (handing the whole list again every round made the rounds
            # quadratic), and those with messages left go to the back.
            work = deque(behind)
            plans: dict[bytes, IndexPlan] = {}
            for _ in range(1_000_000):  # bounded: each round indexes up to INDEX_BATCH messages
                if not work:
                    break
                wanted: list[tuple[bytes, IndexPlan]] = []
                for _ in range(min(len(work), INDEX_BATCH)):
                    conv = work.popleft()
                    plan = plans.get(conv)
                    if plan is None:
                        plan = plans[conv] = plan_for(self.conversation_key(conv))
                    wanted.append((conv, plan))
                work.extend(await self._store.run(self._store.repo.search_index_many, wanted, INDEX_BATCH))
                self.indexed += 1

    # --- searching --------------------------------------------------------------

    async def search(
        self, who: Identity, query: str, conversation: str, offset: int, limit: int
    ) -> tuple[list[tuple[str, int, int]], int]:
        """Messages the user may read holding every word of ``query`` (as
        prefixes, ``search_rules``): one page of (conversation, seq, ms),
        newest first, and how many there are."""
        try:
            terms = rules.query_terms(query)
        except ValueError as exc:
            raise RequestError(str(exc), Code.BAD_REQUEST) from None
        if offset < 0:
            raise RequestError("a search offset is 0 or more", Code.BAD_REQUEST)
        limit = PAGE_MAX if limit <= 0 else min(limit, PAGE_MAX)
        if conversation:
            convs = [ids.parse_conversation(conversation)]
        else:
            convs = await self._conversations_of(who)
        asks = {c: rules.tokens(self.conversation_key(c), terms) for c in convs}
        hits: list[tuple[str, int, int]] = []
        failed: list[TimpyError] = []

        async def ask(owner: str, keys: list[bytes]) -> None:
            wanted = [(k, asks[k]) for k in keys]
            try:
                found = await self._peers.call(owner, ops.SEARCH_CONVS, ops.SearchConvs(who.user_id, wanted))
            except TimpyError as exc:
                failed.append(exc)
                return
            hits.extend((ids.conversation_text(c), q, ms) for c, q, ms in found)

        async with trio.open_nursery() as nursery:  # every owner at once
            for owner, keys in self._peers.by_owner(convs).items():
                nursery.start_soon(ask, owner, keys)
        if failed:
            raise failed[0]  # a search that missed some conversations would look complete: refuse it
        members_only = [h for h in hits if h[1] > 0]
        if conversation and len(hits) == 1 and hits[0][1] == -1:
            raise RequestError("you are not in that conversation", Code.NOT_A_MEMBER)
        members_only.sort(key=lambda h: (-h[2], h[0], -h[1]))
        members_only = members_only[:MAX_HITS]
        return members_only[offset: offset + limit], len(members_only)

    async def _on_search(self, a: ops.SearchConvs) -> list[tuple[bytes, int, int]]:
        """At the conversations' owner: hits as (conv, seq, ms); a conversation
        the user is not in gives (conv, -1, 0) (and nothing else)."""
        user_id, wanted = a.user_id, a.wanted
        convs = [c for c, _ in wanted]
        if any(not self._peers.is_local(c) for c in convs):
            raise NotOwner.of("conversation")
        self._peers.require_write()
        for conv in convs:
            await self._replicator.ensure("conv", conv)
        members = await self._store.run(self._store.repo.search_members, user_id, convs)
        await self.bring_up_to_date([c for c in convs if c in members])
        out: list[tuple[bytes, int, int]] = [(conv, -1, 0) for conv, _ in wanted if conv not in members]
        readable = [(conv, toks) for conv, toks in wanted if conv in members]
        for conv, seq, ms in await self._store.run(self._store.repo.search_conversations, readable, MAX_HITS):
            out.append((conv, seq, ms))
        return out
