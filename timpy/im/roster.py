"""Rosters: friend requests, friends, blocks, across the cluster.

The relation of two users is one record at the key of their 1:1
conversation, so its owner is the node that numbers their messages: the
rules (``roster_rules``) run there under one lock, and the writer there
refuses a blocked sender's messages without asking anyone. After each
change the pair owner mirrors each side into that user's roster record (at
the user's owner, ordered by the pair record's own counter, so a late mirror
never undoes a newer one) and pushes the new roster to both users' live
terminals.
"""

from __future__ import annotations

from typing import Any

from timpy.cluster import catalog as ops
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import roster_rules as rules
from timpy.im.peers import Peers
from timpy.im.records import Records
from timpy.im.signal_routes import Signals
from timpy.im.users import Identity, Users
from timpy.wire.messages import Roster as RosterNotice

OPS = ("list", "request", "accept", "reject", "remove", "block", "unblock")
CATEGORIES = ("friends", "incoming", "outgoing", "blocked")


def relations_of(value: dict[str, Any] | None) -> rules.Relations:
    if not value:
        return rules.Relations()
    a, b = value["users"]
    return rules.Relations(
        friends=frozenset({frozenset((a, b))}) if value["friends"] else frozenset(),
        pending=frozenset(tuple(p) for p in value["pending"]),
        blocks=frozenset(tuple(x) for x in value["blocks"]),
    )


def category(r: rules.Relations, user: str, peer: str) -> str | None:
    """What ``peer`` is in ``user``'s roster."""
    if r.blocked(user, peer):
        return "blocked"
    if r.are_friends(user, peer):
        return "friends"
    if (peer, user) in r.pending:
        return "incoming"
    if (user, peer) in r.pending:
        return "outgoing"
    return None


def roster_view(value: dict[str, Any] | None) -> dict[str, list[str]]:
    peers = (value or {}).get("peers", {})
    return {c: sorted(p for p, (cat, _) in peers.items() if cat == c) for c in CATEGORIES}


class Roster:
    def __init__(self, indexer: BlindIndexer, peers: Peers, records: Records, users: Users,
                 signals: Signals) -> None:
        self._indexer = indexer
        self._peers = peers
        self._records = records
        self._users = users
        self._signals = signals
        peers.serve(ops.ROSTER_OP, self._op_here)
        peers.serve(ops.ROSTER_MIRROR, self._mirror_here)
        peers.serve(ops.ROSTER_GET, self._get_here)

    async def request(self, who: Identity, op: str, user: str) -> dict[str, list[str]]:
        if op not in OPS:
            raise RequestError(f"unknown roster operation {op!r}; known: {', '.join(OPS)}", Code.BAD_REQUEST)
        if op == "list":
            return await self.get(who.user_id)
        peer, pid, pair = await self._users.peer_of(who, user)
        if pid == who.user_id:
            raise RequestError("that is you", Code.BAD_REQUEST)
        await self._peers.ask(ops.ROSTER_OP, ops.RosterOp(pair, who.name, who.user_id, op, peer, pid))
        return await self.get(who.user_id)

    async def get(self, user_id: bytes) -> dict[str, list[str]]:
        return await self._peers.ask(ops.ROSTER_GET, ops.RosterGet(user_id))

    async def _get_here(self, a: ops.RosterGet) -> dict[str, list[str]]:
        return roster_view(await self._records.get(a.user_id, "roster", "user"))

    async def friends_of(self, user_ids: list[bytes]) -> dict[bytes, list[str]]:
        """At the users' owner: each user's friends' names (the rosters not
        cached read in one storage call)."""
        found = await self._records.get_each(user_ids, "roster", "user")
        return {u: roster_view(found.get(u))["friends"] for u in user_ids}

    async def _op_here(self, a: ops.RosterOp) -> None:
        pair, actor, actor_id, op, peer, peer_id = a.pair, a.actor, a.actor_id, a.op, a.peer, a.peer_id

        def change(value: dict[str, Any] | None) -> dict[str, Any]:
            r = relations_of(value)
            if op == "request":
                r = rules.request(r, actor, peer)
            elif op == "accept":
                r = rules.accept(r, actor, peer)
            elif op == "reject":
                r = rules.reject(r, actor, peer)
            elif op == "remove":
                r = rules.remove(r, actor, peer)
            elif op == "block":
                r = rules.block(r, actor, peer)
            else:
                r = rules.unblock(r, actor, peer)
            old_count = (value or {}).get("count", 0)
            name_of = {actor_id: actor, peer_id: peer}
            new = {
                "users": sorted((actor, peer)),
                "friends": r.are_friends(actor, peer),
                "pending": sorted(list(p) for p in r.pending),
                "blocks": sorted(list(b) for b in r.blocks),
                # by id, for the writer's check: (blocker, blocked)
                "blocked_ids": sorted(
                    [k, j] for k in name_of for j in name_of if k != j and r.blocked(name_of[k], name_of[j])
                ),
                "count": old_count,
            }
            if value is not None and {k: v for k, v in new.items() if k != "count"} == {
                k: v for k, v in value.items() if k != "count"
            }:
                return value  # no change
            new["count"] = old_count + 1
            return new

        value = await self._records.update(pair, "pair", "conv", change)
        r = relations_of(value)
        for user, uid, other in ((actor, actor_id, peer), (peer, peer_id, actor)):
            await self._peers.ask(
                ops.ROSTER_MIRROR, ops.RosterMirror(uid, user, other, category(r, user, other), value["count"]))

    async def _mirror_here(self, a: ops.RosterMirror) -> None:
        user_id, peer, cat, count = a.user_id, a.peer, a.category, a.count

        def change(value: dict[str, Any] | None) -> dict[str, Any]:
            peers = dict((value or {}).get("peers", {}))
            if peer in peers and peers[peer][1] >= count:
                return value or {}
            peers[peer] = [cat, count]
            if cat is None:
                peers[peer] = [None, count]  # kept as a tombstone for ordering
            return {"peers": peers}

        value = await self._records.update(user_id, "roster", "user", change)
        self._signals.push([user_id], RosterNotice(**roster_view(value)))
