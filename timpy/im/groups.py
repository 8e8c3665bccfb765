"""Groups: their state at the group's owner node, and messages to them.

A group's id is also its conversation's id, so the group and its messages
live on the same owner node (or backend) and are numbered by the same
writer. The owner applies every operation (``group_rules``) under a lock per
group, stores the new state (sealed, with a version) and mirrors the member
list into the conversation's members, then copies it to the replicas in
embedded mode. A message to a group is checked against the state at the
owner and stored once; its fan-out asks each node that owns members' users
for their inbox entries once per node (``Writer._fan_out``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError
from timpy.im import group_rules as rules
from timpy.im import ids
from timpy.im.events import NO_EVENTS, EventSink, event_id
from timpy.im.group_rules import Group, JoinPolicy, Role
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.users import RESERVED_NAMES, SYSTEM_USER, Identity, Users
from timpy.im.writer import GROUP_PREFIX, Writer
from timpy.store.repository import Store
from timpy.store.rows import Copies
from timpy.wire.messages import KIND_BURN, SendResult

OPS = frozenset({
    "create", "get", "join", "leave", "approve", "reject", "invite", "kick", "set_admin", "transfer",
    "mute", "mute_all", "rename", "set_policy", "set_profile", "dissolve",
})


def pack_group(group: Group) -> bytes:
    return msgpack.packb({
        "name": group.name, "members": {u: int(r) for u, r in group.members.items()},
        "policy": str(group.policy), "max": group.max_size, "requests": sorted(group.requests),
        "muted": sorted(group.muted), "all_muted": group.all_muted, "dissolved": group.dissolved,
        "profile": dict(group.profile),
    })


def unpack_group(group_id: str, raw: bytes) -> Group:
    d = msgpack.unpackb(raw)
    return Group(
        group_id, d["name"], {u: Role(r) for u, r in d["members"].items()}, JoinPolicy(d["policy"]), int(d["max"]),
        frozenset(d["requests"]), frozenset(d["muted"]), bool(d["all_muted"]), bool(d["dissolved"]),
        dict(d.get("profile", {})),
    )


def group_view(group: Group, viewer: str) -> dict[str, Any]:
    """What a member (or a user asking to join) sees of a group."""
    admin = group.is_admin(viewer)
    return {
        "group": group.group_id, "name": group.name, "owner": group.owner,
        "admins": sorted(u for u, r in group.members.items() if r == Role.ADMIN),
        "members": sorted(group.members), "policy": str(group.policy),
        "requests": sorted(group.requests) if admin else [], "muted": sorted(group.muted),
        "all_muted": group.all_muted, "dissolved": group.dissolved, "max_size": group.max_size,
        "profile": dict(group.profile),
    }


class Groups:
    def __init__(
        self, store: Store, indexer: BlindIndexer, limits: Callable[[], Limits], peers: Peers,
        replicator: Replicator, users: Users, writer: Writer, events: EventSink = NO_EVENTS,
    ) -> None:
        self._events = events
        self._store = store
        self._indexer = indexer
        self._limits = limits
        self._peers = peers
        self._replicator = replicator
        self._users = users  # whether a user exists
        self._writer = writer
        self.changed: list[Callable[[bytes, Group | None, Group], None]] = []  # (id, before, after), after a save
        self.send_checks: list[Callable[[Group, str, int, dict[str, str]], None]] = []  # may raise: refused
        # At the owner, between changes: a group's state and its members' ids
        # (sorted by name), valid for the ring it was read under (see _senders).
        self._cache: dict[bytes, tuple[tuple[int, int], Group, tuple[bytes, ...]]] = {}
        self._changes = 0  # bumped before and after every stored change
        peers.serve(ops.GROUP_REQUEST, self._apply_here, replicator, self._copies)
        peers.serve(ops.GROUP_SEND, self._send_here, replicator)
        peers.serve(ops.GROUP_INSPECT, self._inspect_here, replicator)
        peers.serve(ops.GROUP_SYSTEM_SEND, self._system_send_here, replicator)

    # --- requests from clients ---------------------------------------------------

    async def request(
        self, who: Identity, group: str, op: str, users: list[str], name: str, policy: str, flag: bool,
        profile: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if op not in OPS:
            raise RequestError(f"unknown group operation {op!r}; known: {', '.join(sorted(OPS))}", Code.BAD_REQUEST)
        users = [ids.normalize_name(u) for u in users]
        if op == "create":
            gid = os.urandom(16)
        else:
            gid = ids.parse_conversation(group)
        for u in users:
            if u in RESERVED_NAMES or not await self._users.exists(ids.user_id(self._indexer, u)):
                raise RequestError(f"no such user: {u}", Code.NO_SUCH_USER)
        return await self._peers.ask(ops.GROUP_REQUEST, ops.GroupRequest(
            gid, who.name, op, users, str(name), str(policy), bool(flag), dict(profile or {})))

    async def _load(self, gid: bytes) -> tuple[Group, int]:
        """The group's state, at its owner (caught up by the operation: the catalog declares it)."""
        found = await self._store.run(self._store.repo.get_group, gid)
        if found is None:
            raise RequestError("no such group", Code.NO_SUCH_GROUP)
        raw, version = found
        return unpack_group(ids.conversation_text(gid), raw), version

    async def _apply_here(self, a: ops.GroupRequest) -> dict[str, Any]:
        """At the owner, one operation per group at a time (the catalog serializes them)."""
        gid, actor, op = a.group_id, a.actor, a.op
        before: Group | None = None
        if op == "create":
            try:
                chosen = JoinPolicy(a.policy or JoinPolicy.APPROVAL)
            except ValueError:
                raise RequestError(f"unknown join policy {a.policy!r}: open, approval or invite", Code.BAD_REQUEST) from None
            group = rules.create(ids.conversation_text(gid), actor, a.name, chosen, a.users, self._limits().max_group_size)
            version = 0
        else:
            group, version = await self._load(gid)
            if op == "get":
                if actor not in group.members and actor not in group.requests:
                    raise RequestError("you are not a member of that group", Code.NOT_A_MEMBER)
                return group_view(group, actor)
            before = group
            group = self._run(group, actor, op, a.users, a.name, a.policy, a.flag, a.profile)
        await self._save(gid, group, version)
        if self._events.wants("group.changed"):  # hook: webhooks, at the group's owner
            await self._events.emit("group.changed", event_id("group.changed", gid, version + 1), {
                "group": ids.conversation_text(gid), "op": op, "actor": actor, "users": a.users,
                "version": version + 1, "members": [] if group.dissolved else sorted(group.members)},
                ("conv", gid))
        for listener in self.changed:
            listener(gid, before, group)
        return group_view(group, actor)

    def _copies(self, a: ops.GroupRequest, _view: dict[str, Any]) -> Callable[[], Awaitable[Copies]] | None:
        """What a group operation wrote, for the replicas (a "get" wrote nothing)."""
        if a.op == "get":
            return None
        return lambda: self._store.run(self._store.local.conversation_copies, a.group_id, 1 << 62, 1)

    @staticmethod
    def _run(
        group: Group, actor: str, op: str, users: list[str], name: str, policy: str, flag: bool,
        profile: dict[str, str],
    ) -> Group:
        def one() -> str:
            if len(users) != 1:
                raise RequestError(f"group operation {op} names one user", Code.BAD_REQUEST)
            return users[0]

        if op == "join":
            return rules.join(group, actor)
        if op == "leave":
            return rules.leave(group, actor)
        if op in ("approve", "reject", "kick"):
            fn = {"approve": rules.approve, "reject": rules.reject, "kick": rules.kick}[op]
            for user in users or [""]:
                group = fn(group, actor, user)
            return group
        if op == "invite":
            return rules.invite(group, actor, users)
        if op == "set_admin":
            return rules.set_admin(group, actor, one(), flag)
        if op == "transfer":
            return rules.transfer(group, actor, one())
        if op == "mute":
            return rules.mute(group, actor, one(), flag)
        if op == "mute_all":
            return rules.mute_all(group, actor, flag)
        if op == "rename":
            return rules.rename(group, actor, name)
        if op == "set_profile":
            return rules.set_profile(group, actor, profile)
        if op == "set_policy":
            try:
                return rules.set_policy(group, actor, JoinPolicy(policy))
            except ValueError:
                raise RequestError(f"unknown join policy {policy!r}: open, approval or invite", Code.BAD_REQUEST) from None
        return rules.dissolve(group, actor)

    async def _save(self, gid: bytes, group: Group, version: int) -> None:
        members = [] if group.dissolved else [ids.user_id(self._indexer, u) for u in group.members]
        self._cache.pop(gid, None)  # every change, member or not, drops what was kept
        self._changes += 1
        try:
            await self._store.run(self._store.repo.put_group, gid, pack_group(group), members, version)
        finally:
            self._changes += 1
            self._cache.pop(gid, None)

    # --- for operators (the admin API) ---------------------------------------------------

    async def inspect(self, group: str) -> dict[str, Any]:
        """Everything about a group, as its owner sees it."""
        return await self._peers.ask(ops.GROUP_INSPECT, ops.GroupInspect(ids.parse_conversation(group)))

    async def _inspect_here(self, a: ops.GroupInspect) -> dict[str, Any]:
        group, version = await self._load(a.group_id)
        return {**group_view(group, group.owner), "version": version}

    async def system_send(self, system: Identity, group: str, body: bytes) -> SendResult:
        """An operator's message to every member (the sender, 'system', is not one)."""
        gid = ids.parse_conversation(group)
        client_id = os.urandom(16).hex()
        sent = await self._peers.ask(ops.GROUP_SYSTEM_SEND, ops.GroupSystemSend(gid, system.user_id, client_id, body))
        return sent.result(group)

    def _ring(self) -> tuple[int, int]:
        return (self._peers.placement.version, self._peers.epoch_number)

    async def _senders(self, gid: bytes) -> tuple[Group, tuple[bytes, ...]]:
        """The group as its owner holds it and its members' ids, sorted by
        name: kept between changes, so a send to a big group neither reopens
        the sealed state nor hashes every member's name again.

        What is kept is dropped by every change (``_save``) and is good only
        under the ring it was read under: once the ring changes, another node
        may have owned the group (and changed it) meanwhile, and the next
        send reads it again after catching up (``_load``)."""
        ring = self._ring()
        kept = self._cache.get(gid)
        if kept is not None and kept[0] == ring:
            return kept[1], kept[2]
        changes = self._changes
        group, _ = await self._load(gid)
        members = tuple(ids.user_id(self._indexer, u) for u in sorted(group.members))
        # Kept only if no change was stored or under way while it was read (a
        # change bumps the count before and after it stores, and drops the cache).
        if self._ring() == ring and self._changes == changes:
            if len(self._cache) >= 10_000:
                self._cache.pop(next(iter(self._cache)))
            self._cache[gid] = (ring, group, members)
        return group, members

    async def _system_send_here(self, a: ops.GroupSystemSend) -> ops.Sent:
        group, members = await self._senders(a.group_id)
        if group.dissolved:
            raise RequestError("that group was dissolved", Code.NO_SUCH_GROUP)
        result = await self._append(Identity(a.system_id, SYSTEM_USER), a.group_id, members, a.client_id, 0, a.body, {})
        return ops.Sent.of(result)

    # --- messages to groups ----------------------------------------------------------

    async def send(
        self, sender: Identity, group: str, client_id: str, kind: int, body: bytes, ext: dict[str, str]
    ) -> SendResult:
        gid = ids.parse_conversation(group)
        sent = await self._peers.ask(
            ops.GROUP_SEND, ops.GroupSend(gid, sender.user_id, sender.name, client_id, kind, body, dict(ext)))
        return sent.result(group)

    async def _send_here(self, a: ops.GroupSend) -> ops.Sent:
        group, members = await self._senders(a.group_id)
        rules.check_send(group, a.sender)
        for check in self.send_checks:
            check(group, a.sender, a.kind, a.ext)
        if a.kind == KIND_BURN:
            raise RequestError("burn-after-reading is for 1:1 conversations", Code.BAD_REQUEST)
        result = await self._append(
            Identity(a.sender_id, a.sender), a.group_id, members, a.client_id, a.kind, a.body, a.ext,
            admin=group.is_admin(a.sender),
        )
        return ops.Sent.of(result)

    async def check_sender(self, gid: bytes, sender: str) -> None:
        """At the group's owner: may ``sender`` send to the group now (member,
        not muted)? Raises why not. For messages stored under the group (threads)."""
        group, _ = await self._load(gid)
        rules.check_send(group, sender)

    async def _append(
        self, sender: Identity, gid: bytes, members: tuple[bytes, ...], client_id: str, kind: int, body: bytes,
        ext: dict[str, str], admin: bool = False,
    ) -> SendResult:
        """Store a message to a group (at the group's owner, its rules checked):
        once, numbered in the group's conversation, into every member's inbox."""
        text = ids.conversation_text(gid)
        new, content = self._writer.prepare(
            sender.user_id, sender.name, gid, members, GROUP_PREFIX + text, client_id, kind, body, ext
        )
        if self._writer.send_checks:  # webhooks that approve messages: before queueing, in this task
            new, content = await self._writer.screen_send(new, content, text)
        return await self._writer.append(new, content, text, admin)

    async def members_of(self, gid: bytes) -> list[str]:
        """At the group's owner: its members' names."""
        await self._replicator.ensure("conv", gid)
        group, _ = await self._load(gid)
        return sorted(group.members)
