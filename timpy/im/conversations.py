"""The conversation list ("recent chats"), at the user's owner.

Every entry is derived from rows that live with the user: the inbox (with the
message copies kept beside it, sealed), the read marks, and the user's
``convs`` record (flags, groups; ``conversation_rules``). Those rows are
replicated, repaired and moved with the user's other rows, so every device
and every node that answers for the user shows the same list, also after the
ring or the backend map changed.

Kept current live: the writer tells this module (``inbox_changed``) when it
put a message in a local user's inbox, receipts when a read mark moved, groups
when a membership or name changed; the module then recomputes the entries
that changed, in the background and coalesced per user, and pushes each as a
``conversation_entry`` notice (rid 0) to the user's live terminals.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import trio

from timpy.cluster import catalog as ops
from timpy.concurrency import yield_share
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import conversation_rules as rules
from timpy.im import ids, kinds
from timpy.im.peers import Peers
from timpy.im.records import Records
from timpy.im.routes import Routes
from timpy.im.signal_routes import Signals
from timpy.im.users import Identity
from timpy.im.writer import Committed
from timpy.store.repository import Store
from timpy.store.rows import ConversationRows
from timpy.wire.messages import ConversationChanged

log = logging.getLogger("timpy.conversations")

RECORD = "convs"
TAIL = 16  # newest messages read per entry to find the last one that is shown
UNREAD_SCAN = 1000  # messages after the read mark read per entry: counts stop there ("999+")
# (read mark, newest seq counted, fingerprint of those after the mark, unread, mentions)
Kept = tuple[int, int, tuple[int, int, int, int], int, int]
COUNTS_KEPT = 50_000  # (user, conversation) unread counts kept for the next notice (about 0.5 KiB each)
PAGE_MAX = 200
NOTICE_SHARE = 0.25  # at most this share of the time goes to computing live notices
NOTICE_PAUSE_MAX = 1.0  # seconds: the longest pause between two rounds of notices
LIVE_MAX_MEMBERS = 500  # inbox entries of one conversation in one write batch pushed as changed entries
GROUP_PREFIX = "#"


def _fields(content: bytes) -> tuple[str, str, int, dict[str, str]]:
    """(sender, recipient, kind, ext) of an opened message content."""
    f = msgpack.unpackb(content, raw=False)
    return str(f[2]), str(f[3]), int(f[4]), dict(f[6])


def _shows_last(content: bytes) -> bool:
    """A message an entry shows as its last one: the newest rows are opened
    until one is (``ConversationRows.tail``; the entry needs no older one)."""
    return _fields(content)[2] not in kinds.ACTING


class Conversations:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, records: Records, signals: Signals, routes: Routes,
        clock_ms: Callable[[], int], spawn: Callable[..., bool],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._records = records
        self._signals = signals
        self._routes = routes
        self._now = clock_ms
        self._spawn = spawn
        self._names: OrderedDict[bytes, str] = OrderedDict()
        self._counted: OrderedDict[tuple[bytes, bytes], Kept] = OrderedDict()  # ``_keep_count``
        self._dirty: dict[bytes, set[bytes]] = {}
        self._flushing = False
        self.notices = 0  # entries pushed (tests, metrics)
        peers.serve(ops.CONVS_LIST, self._list_here)
        peers.serve(ops.CONVS_SET, self._set_here)
        peers.serve(ops.CONVS_IDS, self._ids_here)
        peers.serve(ops.CONVS_GROUP, self._group_here)

    # --- requests ----------------------------------------------------------

    async def list(self, who: Identity, offset: int, limit: int, archived: bool) -> tuple[list[dict[str, Any]], int]:
        """One page of the user's conversations, and how many there are (archived ones, or the others)."""
        if offset < 0:
            raise RequestError("a conversation list offset is 0 or more", Code.BAD_REQUEST)
        limit = PAGE_MAX if limit <= 0 else min(limit, PAGE_MAX)
        page = await self._peers.ask(ops.CONVS_LIST, ops.ConvsList(who.user_id, who.name, offset, limit, archived))
        return page.entries, page.total

    async def set_flags(
        self, who: Identity, conversation: str, muted: bool | None, pinned: bool | None, archived: bool | None
    ) -> dict[str, Any]:
        """Set some of a conversation's flags (None: unchanged); returns its entry."""
        conv = ids.parse_conversation(conversation)
        flags = [None if v is None else bool(v) for v in (muted, pinned, archived)]
        return await self._peers.ask(ops.CONVS_SET, ops.ConvsSet(who.user_id, who.name, conv, *flags))

    async def conversation_ids(self, who: Identity) -> list[bytes]:
        """Every conversation in the user's list (archived ones too): what the user may search."""
        return await self._peers.ask(ops.CONVS_IDS, ops.ConvsOf(who.user_id))

    # --- at the user's owner -------------------------------------------------

    async def _state(self, user_id: bytes) -> rules.UserConversations:
        return rules.UserConversations.unpack(await self._records.get(user_id, RECORD, "user"))

    async def _activities(
        self, user_id: bytes, state: rules.UserConversations
    ) -> tuple[dict[str, rules.Activity], dict[str, str]]:
        rows = await self._store.run(self._store.repo.conversation_activity, user_id)
        inbox = []
        for conv, pos, ms, content in rows:
            parent = str(_fields(content)[3].get("thread_of", "")) if content else ""
            inbox.append((ids.conversation_text(conv), pos, ms, parent))
        return rules.activities(inbox, state)

    async def _list_here(self, a: ops.ConvsList) -> ops.ConvsPage:
        state = await self._state(a.user_id)
        found, _ = await self._activities(a.user_id, state)
        page, total = rules.visible(list(found.values()), a.archived, a.offset, a.limit)
        entries = await self._entries(a.user_id, a.name, [x.conversation for x in page], state, found)
        return ops.ConvsPage(entries, total)

    async def _ids_here(self, a: ops.ConvsOf) -> list[bytes]:
        """Every conversation of the list and every thread under them."""
        state = await self._state(a.user_id)
        found, threads = await self._activities(a.user_id, state)
        return [ids.parse_conversation(c) for c in [*found, *threads]]

    async def _set_here(self, a: ops.ConvsSet) -> dict[str, Any]:
        user_id, text = a.user_id, ids.conversation_text(a.conv_id)
        listed, _ = await self._activities(user_id, await self._state(user_id))
        if text not in listed:
            raise RequestError("that conversation is not in your list", Code.NOT_A_MEMBER)

        def change(raw: Any) -> Any:
            state = rules.UserConversations.unpack(raw)
            try:
                state = rules.set_flags(state, text, a.muted, a.pinned, a.archived)
            except ValueError as exc:
                raise RequestError(str(exc), Code.LIMIT_REACHED) from None
            return state.pack()

        state = rules.UserConversations.unpack(await self._records.update(user_id, RECORD, "user", change))
        found, _ = await self._activities(user_id, state)
        entry = (await self._entries(user_id, a.name, [text], state, found))[0]
        self._signals.push([user_id], ConversationChanged(entry))
        self.notices += 1
        return entry

    async def _group_here(self, a: ops.ConvsGroup) -> None:
        def change(raw: Any) -> Any:
            state = rules.UserConversations.unpack(raw)
            if a.member:
                return rules.in_group(state, a.group, a.name, self._now()).pack()
            return rules.out_of_group(state, a.group).pack()

        await self._records.update(a.user_id, RECORD, "user", change)
        self.inbox_changed(a.user_id, ids.parse_conversation(a.group))

    async def _name_of(self, user_id: bytes) -> str:
        name = self._names.get(user_id)
        if name is None:
            account = await self._store.run(self._store.repo.get_account, user_id)
            profile = msgpack.unpackb(account.profile) if account is not None and account.profile else {}
            name = str(profile.get("name", ""))
            self._names[user_id] = name
            while len(self._names) > 50_000:
                self._names.popitem(last=False)
        return name

    async def _entries(
        self, user_id: bytes, name: str, conversations: list[str], state: rules.UserConversations,
        activity: dict[str, rules.Activity], read: dict[bytes, ConversationRows] | None = None,
        priors: dict[bytes, Kept] | None = None,
    ) -> list[dict[str, Any]]:
        """``read``: rows already read for some of them; the others are read
        here. ``priors``: the kept counts the rows of ``read`` were asked
        with; rows that hold only the messages after them add to them."""
        priors = priors or {}
        convs = [ids.parse_conversation(c) for c in conversations]
        read = read or {}
        missing = [c for c in convs if c not in read]
        found: dict[bytes, ConversationRows] = dict(read)
        if missing:
            found.update(
                (r.conv_id, r) for r in await self._store.run(self._store.repo.conversation_rows, user_id, missing,
                                                              TAIL, UNREAD_SCAN, None, _shows_last)
            )
        out = []
        for conv in convs:
            rows = found.get(conv)
            prior = None
            if rows is not None and rows.unread_after != rows.read_seq:
                kept = priors.get(conv)
                if kept is None or kept[1] != rows.unread_after:  # not the count it continues: read it as a whole
                    rows = (await self._store.run(
                        self._store.repo.conversation_rows, user_id, [conv], TAIL, UNREAD_SCAN, None, _shows_last
                    ) or [None])[0]
                else:
                    prior = rules.Counted(kept[3], kept[4])
            entry = self._entry(name, conv, rows, state, prior)
            if rows is not None and rows.counted is not None:
                self._keep_count(user_id, rows, entry)
            a = activity.get(entry["conversation"])
            if a is not None:  # a thread's newer activity counts for its parent
                entry["last_time"] = max(entry["last_time"], a.last_ms)
            out.append(entry)
        return out

    def _keep_count(self, user_id: bytes, rows: ConversationRows, entry: dict[str, Any]) -> None:
        """What was counted of a conversation, for the next notice to count only newer messages."""
        assert rows.counted is not None
        key = (user_id, rows.conv_id)
        self._counted[key] = (rows.read_seq, rows.counted[0], rows.counted[1], entry["unread"], entry["mentions"])
        self._counted.move_to_end(key)
        while len(self._counted) > COUNTS_KEPT:
            self._counted.popitem(last=False)

    @staticmethod
    def _entry(
        me: str, conv: bytes, rows: ConversationRows | None, state: rules.UserConversations,
        prior: rules.Counted | None = None,
    ) -> dict[str, Any]:
        text = ids.conversation_text(conv)
        flags = state.flags_of(text)
        group = state.groups.get(text)
        entry: dict[str, Any] = {
            "conversation": text, "group": group is not None or text in state.left, "peer": "",
            "name": group[0] if group else "", "last": None, "last_time": group[1] if group else 0,
            "unread": 0, "mentions": 0, "muted": flags.muted, "pinned": flags.pinned, "archived": flags.archived,
            "read_seq": 0,
        }
        if rows is None:
            return entry
        entry["last_time"] = rows.last_ms
        entry["read_seq"] = rows.read_seq
        for seq, ms, content in rows.tail:
            if not content:
                continue
            sender, recipient, kind, _ext = _fields(content)
            if recipient.startswith(GROUP_PREFIX):
                entry["group"] = True
            elif not entry["peer"]:
                entry["peer"] = recipient if sender == me else sender
            if entry["last"] is None and kind not in kinds.ACTING:
                entry["last"] = [seq, ms, content]
        messages: list[tuple[int, str, int, dict[str, str], bool]] = []
        for seq, _ms, content in rows.unread:
            if content:
                sender, _recipient, kind, ext = _fields(content)
                messages.append((seq, sender, kind, ext, False))
            else:
                messages.append((seq, "", 0, {}, True))
        counted = rules.count_unread(me, rows.read_seq, messages, kinds.ACTING)
        if prior is not None:  # ``rows.unread`` holds only the messages after those counted before
            counted = rules.Counted(prior.unread + counted.unread, prior.mentions + counted.mentions)
        entry["unread"], entry["mentions"] = counted.unread, counted.mentions
        return entry

    # --- live notices ---------------------------------------------------------

    def inbox_changed(self, user_id: bytes, conv_id: bytes) -> None:
        """At the user's owner: an entry of the user may have changed (a message
        in its inbox, a read mark moved, a group change). Told to the user's
        live terminals soon, coalesced."""
        if not self._routes.nodes_of(user_id):
            return  # no live terminal anywhere: nobody to tell
        self._dirty.setdefault(user_id, set()).add(conv_id)
        if not self._flushing and self._spawn(self._flush):
            self._flushing = True

    async def _flush(self) -> None:
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, {}
                started = trio.current_time()
                await self._notice_round(dirty)
                # Under load the notices of one round come from many writer
                # batches: fewer, larger rounds (at most NOTICE_SHARE of the
                # time) leave the loop and the store thread to the writer.
                await yield_share(started, NOTICE_SHARE, NOTICE_PAUSE_MAX)
        finally:
            self._flushing = False

    async def _notice_round(self, dirty: dict[bytes, set[bytes]]) -> None:
        """One user's changed entries after another, each told to its live terminals."""
        for user_id, convs in dirty.items():
            try:
                name = await self._name_of(user_id)
                state = await self._state(user_id)
                shown, activity, rows, priors = await self._changed(user_id, sorted(convs), state)
                for entry in await self._entries(user_id, name, shown, state, activity, rows, priors):
                    self._signals.push([user_id], ConversationChanged(entry))
                    self.notices += 1
            except TimpyError as exc:
                log.info("a conversation list notice was dropped: %s", exc.text)
            except Exception:  # a bug must not end the node's background tasks: logged, the next change retries
                log.exception("computing a conversation list notice failed")

    async def _changed(
        self, user_id: bytes, convs: list[bytes], state: rules.UserConversations
    ) -> tuple[list[str], dict[str, rules.Activity], dict[bytes, ConversationRows], dict[bytes, Kept]]:
        """The entries that changed conversations show (a thread's is its
        parent's, with the thread's newest time), without reading the whole
        inbox; and the rows read, which the entries of the conversations
        themselves (not threads) are made of."""
        known: dict[bytes, Any] = {}
        priors: dict[bytes, Kept] = {}
        for conv in convs:
            kept = self._counted.get((user_id, conv))
            if kept is not None:
                known[conv] = kept[:3]
                priors[conv] = kept
        rows = await self._store.run(
            self._store.repo.conversation_rows, user_id, convs, TAIL, UNREAD_SCAN, known, _shows_last
        )
        # A recall, burn or edit among the new messages may have changed the
        # ones counted before in a way their fingerprint does not show (an
        # edit of the same length that changes who is mentioned): those are
        # counted again as a whole.
        again = [
            r.conv_id for r in rows
            if r.unread_after != r.read_seq and any(not c or _fields(c)[2] in kinds.ACTING for _, _, c in r.unread)
        ]
        if again:
            for conv in again:
                self._counted.pop((user_id, conv), None)
            fresh = {r.conv_id: r for r in await self._store.run(
                self._store.repo.conversation_rows, user_id, again, TAIL, UNREAD_SCAN, None, _shows_last)}
            rows = [fresh.get(r.conv_id, r) for r in rows]
        shown: set[str] = set()
        activity: dict[str, rules.Activity] = {}
        found = {r.conv_id: r for r in rows}
        for conv in convs:
            text, r = ids.conversation_text(conv), found.get(conv)
            parent = str(_fields(r.tail[0][2])[3].get("thread_of", "")) if r and r.tail and r.tail[0][2] else ""
            if parent and r is not None:
                a = activity.get(parent)
                if a is None or r.last_ms > a.last_ms:
                    activity[parent] = rules.Activity(parent, r.last_ms, r.last_pos, state.flags_of(parent))
                text = parent
            shown.add(text)
        return sorted(t for t in shown if t not in state.left), activity, found, priors

    # --- group changes, from the group's owner -------------------------------------

    def committed(self, committed: Sequence[Committed]) -> None:
        """The writer's listener: each committed message's inbox entries placed
        here change that user's entry. A conversation with more than
        ``LIVE_MAX_MEMBERS`` entries in one batch (a large group) is not
        recomputed for each member: the delivery itself tells each terminal,
        and the next list read is current. Only queues work (``_flush`` runs
        in the background)."""
        per_conv: dict[str, int] = {}
        for c in committed:
            conv = c.message.conversation
            per_conv[conv] = per_conv.get(conv, 0) + len(c.inbox)
        conv_ids: dict[str, bytes] = {}
        for c in committed:
            conv = c.message.conversation
            if per_conv[conv] <= LIVE_MAX_MEMBERS:  # a large group's members are not even listed
                conv_id = conv_ids.get(conv) or conv_ids.setdefault(conv, ids.parse_conversation(conv))
                for user_id in c.inbox:
                    self.inbox_changed(user_id, conv_id)

    def group_saved(self, gid: bytes, before: Any, after: Any) -> None:
        """The groups' hook, at the group's owner: the state before (None: a new
        group) and after an operation (``group_rules.Group``)."""
        was = {} if before is None else {ids.user_id(self._indexer, u): u for u in before.members}
        now = {ids.user_id(self._indexer, u): u for u in after.members}
        renamed = before is not None and before.name != after.name
        dissolved = after.dissolved and not (before is not None and before.dissolved)
        self.group_changed(gid, was, now, after.name, renamed, dissolved)

    def group_changed(self, gid: bytes, before: dict[bytes, str], after: dict[bytes, str], name: str,
                      renamed: bool, dissolved: bool) -> None:
        """At the group's owner, after an operation: members (user id -> name)
        before and after it. The record of each user who joined or left (every
        member when the group was renamed or dissolved) learns it."""
        group = ids.conversation_text(gid)
        changed = set(before) ^ set(after)
        if renamed or dissolved:
            changed |= set(before) | set(after)
        for user_id in sorted(changed):
            member = user_id in after and not dissolved
            self._spawn(self._peers.ask, ops.CONVS_GROUP, ops.ConvsGroup(user_id, group, name, member))
