"""Presence: online while a terminal is logged in, a custom status (online,
busy, away, free text), invisible; friends and subscribers are told of
changes.

Everything about a user's presence is at the user's owner: its routing
records say whether a terminal is live (``Routes.watch_presence``: the node wires ``Presence.terminals_changed`` to it), its
"presence" record keeps the status the user set (sealed, replicated; it
survives restarts), and it keeps in memory who subscribed. On a change it
pushes the new presence to the live terminals of the user's friends and
subscribers (``Signals``). An invisible user looks offline to everyone but
their own terminals. Subscriptions live at the owner's memory: they end
when the subscriber unsubscribes, and are lost when the owner changes (a
client subscribes again when it reconnects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from timpy.cluster import catalog as ops
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids
from timpy.im.peers import Peers
from timpy.im.records import Records
from timpy.im.routes import Routes
from timpy.im.signal_routes import Signals
from timpy.im.users import Identity
from timpy.store.repository import Store
from timpy.wire.messages import Presence as PresenceView
from timpy.wire.messages import PresenceList

STATUSES = ("online", "busy", "away")
MAX_TEXT = 200
MAX_QUERY = 500  # users in one query
MAX_SUBSCRIBERS = 1000  # per watched user


class Presence:
    def __init__(
        self, store: Store, indexer: BlindIndexer, peers: Peers, records: Records, routes: Routes,
        friends_of: Callable[[list[bytes]], Awaitable[dict[bytes, list[str]]]], signals: Signals, clock_ms: Callable[[], int], spawn: Callable[..., bool],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._peers = peers
        self._records = records
        self._routes = routes
        self._friends_of = friends_of  # at the users' owner: their friends' names (the roster feature)
        self._signals = signals
        self._now = clock_ms
        self._spawn = spawn
        self._since: dict[bytes, int] = {}
        self._names: dict[bytes, str] = {}
        self._subscribers: dict[bytes, set[bytes]] = {}
        self._changed: dict[bytes, None] = {}  # users whose presence changed, not yet announced (in order)
        self._announcing = False  # a round of announcements is under way
        peers.serve(ops.PRESENCE_SET, self._set_here)
        peers.serve(ops.PRESENCE_GET, self._get_here)

    # --- from clients ---------------------------------------------------------

    async def set(self, who: Identity, status: str, text: str, invisible: bool) -> None:
        status = status or "online"
        if status not in STATUSES:
            raise RequestError(f"unknown status {status!r}: one of {', '.join(STATUSES)}", Code.BAD_REQUEST)
        if len(text) > MAX_TEXT:
            raise RequestError(f"a status text has at most {MAX_TEXT} characters", Code.BAD_REQUEST)
        await self._peers.ask(ops.PRESENCE_SET, ops.PresenceSet(who.user_id, who.name, status, text, bool(invisible)))

    async def query(self, who: Identity, users: list[str], subscribe: bool, unsubscribe: bool) -> list[dict[str, Any]]:
        if len(users) > MAX_QUERY:
            raise RequestError(f"ask for at most {MAX_QUERY} users at once", Code.BAD_REQUEST)
        names = list(dict.fromkeys(ids.normalize_name(u) for u in users))
        by_id = {ids.user_id(self._indexer, n): n for n in names}
        out: dict[str, dict[str, Any]] = {}
        for uids in self._peers.by_owner(by_id).values():
            found = await self._peers.ask(ops.PRESENCE_GET, ops.PresenceGet(
                uids[0], uids, [by_id[u] for u in uids], who.user_id, bool(subscribe), bool(unsubscribe)))
            for p in found:
                out[p["user"]] = dict(p)
        return [out[n] for n in names if n in out]

    # --- at the user's owner ------------------------------------------------------

    async def _status(self, user_id: bytes) -> dict[str, Any]:
        return await self._records.get(user_id, "presence", "user") or {
            "status": "online", "text": "", "invisible": False,
        }

    async def _view(self, user_id: bytes, name: str, for_self: bool = False) -> dict[str, Any]:
        st = await self._status(user_id)
        online = self._routes.online(user_id) and (for_self or not st["invisible"])
        return {
            "user": name, "online": online, "status": st["status"] if online else "offline",
            "text": st["text"] if online else "", "since": self._since.get(user_id, 0),
        }

    async def _set_here(self, a: ops.PresenceSet) -> None:
        self._names[a.user_id] = a.name
        new = {"status": a.status, "text": a.text, "invisible": a.invisible}
        await self._records.update(a.user_id, "presence", "user", lambda _old: new)
        self._since[a.user_id] = self._now()
        await self._announce(a.user_id, a.name, to_self=True)

    async def _get_here(self, a: ops.PresenceGet) -> list[dict[str, Any]]:
        out = []
        for uid, name in zip(a.user_ids, a.names, strict=True):
            self._peers.require_owner(uid, "user")  # the key checked is the first; the others too
            self._names[uid] = name
            if a.subscribe:
                subs = self._subscribers.setdefault(uid, set())
                if len(subs) < MAX_SUBSCRIBERS:
                    subs.add(a.asker)
            if a.unsubscribe:
                self._subscribers.get(uid, set()).discard(a.asker)
            out.append(await self._view(uid, name, for_self=a.asker == uid))
        return out

    def terminals_changed(self, user_id: bytes, online: bool) -> None:
        """A user's first terminal came or last one went (the owner's routing records).

        Told in the background, off the login's path: the changes that come
        while one round of announcements runs are announced together by the
        next (each with the user's presence at that moment), their rosters,
        names and statuses read in one storage call each."""
        self._since[user_id] = self._now()
        self._changed[user_id] = None
        if not self._announcing:
            self._announcing = self._spawn(self._announce_changed)

    async def _announce_changed(self) -> None:
        users, self._changed = list(self._changed), {}
        try:
            try:
                await self._announce_together(users)
            except TimpyError:
                for uid in users:  # one whose records cannot be read now fails alone
                    with contextlib.suppress(TimpyError):
                        await self._announce_together([uid])
        finally:
            self._announcing = False
            if self._changed:  # changes that came meanwhile: the next round
                self._announcing = self._spawn(self._announce_changed)

    async def _announce_together(self, users: list[bytes]) -> None:
        friends = await self._friends_of(users)
        watched: dict[bytes, set[bytes]] = {}
        for uid in users:
            watchers = {ids.user_id(self._indexer, f) for f in friends[uid]} | self._subscribers.get(uid, set())
            if watchers:  # nobody to tell: no name or status to read
                watched[uid] = watchers
        if not watched:
            return
        names = await self._names_of(list(watched))
        await self._records.get_each(list(watched), "presence", "user")  # the statuses, in one read
        for uid, watchers in watched.items():
            if names.get(uid):
                view = await self._view(uid, names[uid])
                self._signals.push(watchers, PresenceList([PresenceView(**view)]))

    async def _names_of(self, user_ids: list[bytes]) -> dict[bytes, str]:
        """The names of users (their accounts here, at their owner); missing ones are left out."""
        missing = [u for u in user_ids if u not in self._names]
        if missing:
            accounts = await self._store.run(self._store.repo.get_accounts, missing)
            for uid, account in zip(missing, accounts, strict=True):
                if account is not None:
                    self._names[uid] = str(msgpack.unpackb(account.profile).get("name", ""))
        return {u: self._names[u] for u in user_ids if u in self._names}

    async def _announce(self, user_id: bytes, name: str, to_self: bool = False) -> None:
        friends = (await self._friends_of([user_id]))[user_id]
        watchers = {ids.user_id(self._indexer, f) for f in friends} | self._subscribers.get(user_id, set())
        view = await self._view(user_id, name)
        if watchers:
            self._signals.push(watchers, PresenceList([PresenceView(**view)]))
        if to_self:  # the user's other terminals see the status set
            self._signals.push([user_id], PresenceList([PresenceView(**await self._view(user_id, name, for_self=True))]))
