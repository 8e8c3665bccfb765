"""Rooms and streams (N:N, never stored).

A room is named by its users and exists while someone is in it. Its owner
node (the owner of the room name's blind index) keeps, in memory, which
terminals are in it and on which nodes, and a token bucket that limits its
stream rate. Stream data sent by a member goes to the owner, which pushes it
straight to the nodes holding the other members' terminals (one request per
node). The number of rooms a user is in (over all terminals) is counted at
the user's owner (``max_rooms_per_user``).

Membership is per terminal: a terminal that closes leaves its rooms; a node
that dies leaves them for its terminals; when the ring changes every node
enters its terminals' rooms again at their (possibly new) owners.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im.peers import Peers
from timpy.im.ratelimit import TokenBucket
from timpy.im.signal_routes import Signals
from timpy.im.terminals import LiveTerminal
from timpy.im.users import Identity
from timpy.wire.messages import StreamData

MAX_ROOM_NAME = 64
_ROOM_RE = re.compile(r"^[\w.\- ]+$")
OPS = ("enter", "leave", "members")


def room_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RequestError("a room needs a name", Code.BAD_REQUEST)
    norm = unicodedata.normalize("NFKC", name).strip()
    if len(norm) > MAX_ROOM_NAME or not _ROOM_RE.match(norm):
        raise RequestError(
            f"a room name has 1 to {MAX_ROOM_NAME} letters, digits, spaces, '_', '.' or '-'", Code.BAD_REQUEST
        )
    return norm


@dataclass
class _Room:
    name: str
    bucket: TokenBucket
    members: dict[tuple[bytes, bytes], tuple[str, str]] = field(default_factory=dict)  # (user, device) -> (name, node)


class Rooms:
    def __init__(
        self, indexer: BlindIndexer, peers: Peers, signals: Signals, limits: Callable[[], Limits],
        clock: Callable[[], float], spawn: Callable[..., None],
    ) -> None:
        self._indexer = indexer
        self._peers = peers
        self._signals = signals
        self._limits = limits
        self._clock = clock
        self._spawn = spawn
        self._rooms: dict[bytes, _Room] = {}  # at room owners
        self._joined: dict[bytes, dict[tuple[bytes, bytes], str]] = {}  # at user owners: user -> (room, device) -> node
        self._local: dict[tuple[bytes, bytes], dict[bytes, tuple[str, str]]] = {}  # here: terminal -> room -> (name, user)
        self.streamed = 0  # stream frames accepted by rooms this node owns
        peers.serve(ops.ROOM_ENTER, self._enter_here)
        peers.serve(ops.ROOM_LEAVE, self._leave_here)
        peers.serve(ops.ROOM_MEMBERS, self._members_here)
        peers.serve(ops.ROOM_STREAM, self._stream_here)
        peers.serve(ops.ROOM_RESERVE, self._reserve_here)
        peers.serve(ops.ROOM_RELEASE, self._release_here)

    def room_key(self, name: str) -> bytes:
        return self._indexer.index("room", name)

    # --- from clients ---------------------------------------------------------

    async def request(self, who: Identity, terminal: LiveTerminal, room: str, op: str) -> dict[str, Any]:
        if op not in OPS:
            raise RequestError(f"unknown room operation {op!r}; known: {', '.join(OPS)}", Code.BAD_REQUEST)
        name = room_name(room)
        key = self.room_key(name)
        me = self._peers.self_id
        local = (terminal.user_id, terminal.device_id)
        release = ops.RoomRelease(who.user_id, key, terminal.device_id)
        if op == "enter":
            await self._peers.ask(ops.ROOM_RESERVE, ops.RoomReserve(who.user_id, key, terminal.device_id, me, False))
            try:
                members = await self._peers.ask(
                    ops.ROOM_ENTER, ops.RoomEnter(key, name, who.user_id, who.name, terminal.device_id, me))
            except TimpyError:
                await self._peers.ask(ops.ROOM_RELEASE, release)
                raise
            self._local.setdefault(local, {})[key] = (name, who.name)
        elif op == "leave":
            self._local.get(local, {}).pop(key, None)
            members = await self._peers.ask(ops.ROOM_LEAVE, ops.RoomLeave(key, who.user_id, terminal.device_id))
            await self._peers.ask(ops.ROOM_RELEASE, release)
        else:
            members = await self._peers.ask(ops.ROOM_MEMBERS, ops.RoomMembers(key))
        return {"room": name, "members": list(members)}

    async def stream(self, who: Identity, terminal: LiveTerminal, room: str, data: bytes) -> None:
        name = room_name(room)
        key = self.room_key(name)
        if key not in self._local.get((terminal.user_id, terminal.device_id), {}):
            raise RequestError(f"enter room {name!r} before streaming to it", Code.NOT_A_MEMBER)
        if len(data) > self._limits().max_body:
            raise RequestError(
                f"stream data of {len(data)} bytes exceeds the limit of {self._limits().max_body}", Code.BODY_TOO_LARGE
            )
        await self._peers.ask(ops.ROOM_STREAM, ops.RoomStream(key, who.user_id, who.name, terminal.device_id, data))

    def terminal_closed(self, terminal: LiveTerminal) -> None:
        """Leave every room the terminal was in (in the background)."""
        rooms = self._local.pop((terminal.user_id, terminal.device_id), {})
        for key in rooms:
            self._spawn(self._quietly_leave, key, terminal.user_id, terminal.device_id)

    async def _quietly_leave(self, key: bytes, user_id: bytes, device_id: bytes) -> None:
        try:
            await self._peers.ask(ops.ROOM_LEAVE, ops.RoomLeave(key, user_id, device_id))
            await self._peers.ask(ops.ROOM_RELEASE, ops.RoomRelease(user_id, key, device_id))
        except TimpyError:
            pass  # the owner is gone: its records went with it

    def ring_changed(self, nodes: frozenset[str]) -> None:
        """Forget the terminals of nodes that left; enter this node's terminals'
        rooms again at their (possibly new) owners."""
        for room_key in list(self._rooms):
            room = self._rooms[room_key]
            room.members = {k: v for k, v in room.members.items() if v[1] in nodes}
            if not room.members:
                del self._rooms[room_key]
        for user_id in list(self._joined):
            kept = {k: n for k, n in self._joined[user_id].items() if n in nodes}
            if kept:
                self._joined[user_id] = kept
            else:
                del self._joined[user_id]
        for (user_id, device_id), rooms in self._local.items():
            for key, (name, user) in rooms.items():
                self._spawn(self._reenter, key, name, user_id, user, device_id)

    async def _reenter(self, key: bytes, name: str, user_id: bytes, user: str, device_id: bytes) -> None:
        me = self._peers.self_id
        try:
            await self._peers.ask(ops.ROOM_RESERVE, ops.RoomReserve(user_id, key, device_id, me, True))
            await self._peers.ask(ops.ROOM_ENTER, ops.RoomEnter(key, name, user_id, user, device_id, me))
        except TimpyError:
            pass  # the next ring change tries again

    # --- at the room's owner --------------------------------------------------------

    async def _enter_here(self, a: ops.RoomEnter) -> list[str]:
        limits = self._limits()
        room = self._rooms.get(a.room_key)
        if room is None:
            room = self._rooms[a.room_key] = _Room(
                a.name, TokenBucket(limits.room_stream_rate, limits.room_stream_burst, self._clock()))
        room.members[(a.user_id, a.device_id)] = (a.user, a.node)
        return self._names(room)

    async def _leave_here(self, a: ops.RoomLeave) -> list[str]:
        room = self._rooms.get(a.room_key)
        if room is None:
            return []
        room.members.pop((a.user_id, a.device_id), None)
        if not room.members:
            del self._rooms[a.room_key]
            return []
        return self._names(room)

    async def _members_here(self, a: ops.RoomMembers) -> list[str]:
        room = self._rooms.get(a.room_key)
        return self._names(room) if room is not None else []

    @staticmethod
    def _names(room: _Room) -> list[str]:
        return sorted(name for name, _ in room.members.values())

    async def _stream_here(self, a: ops.RoomStream) -> None:
        room = self._rooms.get(a.room_key)
        sender = (a.user_id, a.device_id)
        if room is None or sender not in room.members:
            raise RequestError("you are not in that room (enter it again)", Code.NOT_A_MEMBER)
        if not room.bucket.take(self._clock()):
            raise RequestError(
                f"room {room.name!r} is over its stream rate of {self._limits().room_stream_rate:g}/s; slow down",
                Code.RATE_LIMITED,
            )
        self.streamed += 1
        by_node: dict[str, list[tuple[bytes, bytes]]] = {}
        for terminal, (_, node) in room.members.items():
            if terminal != sender:
                by_node.setdefault(node, []).append(terminal)
        notice = StreamData(room.name, a.user, a.data)
        for node, terminals in by_node.items():
            self._signals.to_terminals(node, terminals, notice)

    # --- at the user's owner ------------------------------------------------------------

    async def _reserve_here(self, a: ops.RoomReserve) -> None:
        joined = self._joined.setdefault(a.user_id, {})
        rooms = {k for k, _ in joined}
        if a.room_key not in rooms and len(rooms) >= self._limits().max_rooms_per_user and not a.again:
            if not joined:
                del self._joined[a.user_id]
            raise RequestError(
                f"you are in {len(rooms)} rooms, the limit; leave one first", Code.LIMIT_REACHED
            )
        joined[(a.room_key, a.device_id)] = a.node

    async def _release_here(self, a: ops.RoomRelease) -> None:
        joined = self._joined.get(a.user_id)
        if joined is not None:
            joined.pop((a.room_key, a.device_id), None)
            if not joined:
                del self._joined[a.user_id]
