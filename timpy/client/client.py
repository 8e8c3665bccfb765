"""The Python client library.

``async with timpy.connect(url, user, password) as client:`` opens a
connection (``tcp://HOST:PORT`` or ``ws://HOST:PORT/``), logs in, receives
the messages that arrived while this device was away, and then yields live
ones from ``client.events()``. Every message handed to the program is
acknowledged to the node, so it is not delivered to this device again;
deliveries are deduplicated by inbox position, so none is handed over twice.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import trio
import trio_websocket
from thriftpy2.thrift import TPayload

from timpy.concurrency import unwrap_single_error
from timpy.errors import Code, RemoteError, TimpyError
from timpy.im.messages import KIND_DELETED, KIND_EDIT, KIND_NORMAL, KIND_RECALL, ChatMessage
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

CLIENT_MAX_FRAME = 64 * 1024 * 1024
ACK_INTERVAL = 0.05


@dataclass(frozen=True)
class Ack:
    client_id: str
    conversation: str
    seq: int
    server_time: int
    duplicate: bool


@dataclass(frozen=True)
class HistoryPage:
    conversation: str
    messages: list[ChatMessage]
    more: bool


@dataclass(frozen=True)
class GroupInfo:
    group: str  # the group's id, also its conversation's
    name: str
    owner: str
    admins: list[str]
    members: list[str]
    policy: str
    requests: list[str]  # seen by the owner and admins
    muted: list[str]
    all_muted: bool
    dissolved: bool
    max_size: int
    profile: dict[str, str] = field(default_factory=dict)  # avatar, notice, description, ...


@dataclass(frozen=True)
class Roster:
    friends: list[str]
    incoming: list[str]  # friend requests waiting for this user's answer
    outgoing: list[str]  # this user's requests waiting for an answer
    blocked: list[str]


@dataclass(frozen=True)
class Presence:
    user: str
    online: bool
    status: str  # online, busy, away; "offline" when not online
    text: str
    since: int  # ms since the epoch of the last change


@dataclass(frozen=True)
class Receipt:
    conversation: str
    seq: int
    read: bool  # False: delivered
    user: str  # who received or read it


@dataclass(frozen=True)
class Signal:
    kind: str  # "typing", or an application's own
    sender: str
    data: bytes
    to: str  # set for a signal to a user
    conversation: str  # set for a signal to a conversation


@dataclass(frozen=True)
class StreamData:
    room: str
    sender: str
    data: bytes


@dataclass(frozen=True)
class RoomInfo:
    room: str
    members: list[str]  # one name per terminal in the room


@dataclass(frozen=True)
class Unread:
    counts: dict[str, int]  # conversation -> unread messages (others' messages after the read mark)
    read: dict[str, int]  # conversation -> read up to this seq


@dataclass(frozen=True)
class Profile:
    user: str
    nickname: str
    avatar: str
    fields: dict[str, str]


#: What ``Client.notices()`` yields: pushes that are not stored messages.
Notice = Roster | Presence | Receipt | Signal | StreamData


def _roster(r: TPayload) -> Roster:
    return Roster(list(r.friends or []), list(r.incoming or []), list(r.outgoing or []), list(r.blocked or []))


def _presence(p: TPayload) -> Presence:
    return Presence(p.user or "", bool(p.online), p.status or "", p.text or "", p.since or 0)


def _notices_of(op: str, body: TPayload) -> list[Notice]:
    if op == "roster":
        return [_roster(body)]
    if op == "presence_list":
        return [_presence(p) for p in body.users or []]
    if op == "receipt":
        return [Receipt(body.conversation or "", body.seq or 0, bool(body.read), body.user or "")]
    if op == "signal":
        return [Signal(body.kind or "", body.sender or "", body.data or b"", body.to or "", body.conversation or "")]
    if op == "stream":
        return [StreamData(body.room or "", body.sender or "", body.data or b"")]
    return []


def message_from_wire(m: TPayload) -> ChatMessage:
    return ChatMessage(
        conversation=m.conversation or "",
        seq=m.seq or 0,
        client_id=m.client_id or "",
        sender=m.sender or "",
        recipient=m.recipient or "",
        kind=m.kind or 0,
        body=m.body or b"",
        server_time=m.server_time or 0,
        ext=dict(m.ext or {}),
    )


#: Opens a byte stream to a node, for ``connect`` and ``register`` in place of a URL.
Connector = Callable[[], Awaitable[trio.abc.Stream]]


class _TcpChannel:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME)
        self._ready: deque[bytes] = deque()
        self._lock = trio.Lock()

    async def send(self, frame: TPayload) -> None:
        async with self._lock:
            await self._stream.send_all(frame_bytes(wp.encode(frame)))

    async def send_raw(self, data: bytes) -> None:
        async with self._lock:
            await self._stream.send_all(data)

    async def receive(self) -> TPayload | None:
        while not self._ready:
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._ready.extend(self._decoder.feed(data))
        return wp.decode(self._ready.popleft())

    async def aclose(self) -> None:
        await self._stream.aclose()


class _WsChannel:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def send(self, frame: TPayload) -> None:
        await self._ws.send_message(wp.encode(frame))

    async def send_raw(self, data: bytes) -> None:
        await self._ws.send_message(data)

    async def receive(self) -> TPayload | None:
        try:
            data = await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            return None
        if isinstance(data, str):
            from timpy.wire.jsonmap import decode_json

            return decode_json(data)
        return wp.decode(data)

    async def aclose(self) -> None:
        await self._ws.aclose()


class Client:
    """A logged-in connection to a node. Create it with ``connect``."""

    def __init__(self, channel: Any, nursery: trio.Nursery) -> None:
        self._channel = channel
        self._nursery = nursery
        self._rids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[TPayload]]] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[int, ChatMessage]](math.inf)
        self._notices_send, self._notices_recv = trio.open_memory_channel[Notice](10_000)
        self._notices_dropped = 0
        self._sent_ids: deque[str] = deque(maxlen=10_000)
        self._sent_set: set[str] = set()
        self._last_pos = 0
        self._ack_pos = 0
        self._ack_wanted = trio.Event()  # set when a delivery waits to be acknowledged
        self._acked_pos = 0
        self._synced = trio.Event()
        self.closed_reason: str | None = None
        self.closed_code = Code.UNAVAILABLE  # the node's reason for closing, when it gave one (KICKED, ...)
        self.user = ""
        self.token = ""
        self.device = ""
        self.node_id = ""
        self.max_body = 0

    # --- plumbing -------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self._channel.receive()
                if frame is None:
                    break
                self._dispatch(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed, TimpyError) as exc:
            self.closed_reason = str(exc)
        finally:
            self.closed_reason = self.closed_reason or "the node closed the connection"
            for event, _ in self._waiting.values():
                event.set()
            self._events_send.close()
            self._notices_send.close()
            self._synced.set()

    def _dispatch(self, frame: TPayload) -> None:
        rid = frame.rid or 0
        op, body = wp.operation_of(frame)
        if op == "delivery":
            self._on_delivery(body)
            return
        if op == "sync_done":
            self._synced.set()
        if rid == 0 and op in ("roster", "presence_list", "receipt", "signal", "stream"):
            for notice in _notices_of(op, body):
                try:
                    self._notices_send.send_nowait(notice)
                except trio.WouldBlock:
                    self._notices_dropped += 1  # nobody reads them: keep memory bounded
            return
        if rid in self._waiting:
            event, box = self._waiting.pop(rid)
            box.append(frame)
            event.set()
        elif op == "error":
            self.closed_reason = f"{body.text} (code {body.code})"
            if body.code in Code._value2member_map_:
                self.closed_code = Code(body.code)

    def _on_delivery(self, body: TPayload) -> None:
        pos = body.pos or 0
        if pos <= self._last_pos:
            return  # seen already (a resync after unflushed acks)
        self._last_pos = pos
        message = message_from_wire(body.message)
        if message.kind == KIND_DELETED:  # recalled or burned before this terminal got it: nothing to show
            self._ack_pos = max(self._ack_pos, pos)
            self._ack_wanted.set()
            return
        if message.sender == self.user and message.client_id in self._sent_set:
            self._ack_pos = max(self._ack_pos, pos)  # our own send, echoed to this terminal
            self._ack_wanted.set()
            return
        self._events_send.send_nowait((pos, message))

    async def _acker(self) -> None:
        # Idle until something needs acknowledging, then batch for ACK_INTERVAL:
        # thousands of idle clients in one program cost nothing.
        while True:
            await self._ack_wanted.wait()
            await trio.sleep(ACK_INTERVAL)
            self._ack_wanted = trio.Event()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        if self._ack_pos > self._acked_pos and self.closed_reason is None:
            pos = self._ack_pos
            try:
                await self._channel.send(wp.make_frame("delivery_ack", pos=pos))
                self._acked_pos = pos
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
                pass

    async def request(self, op: str, payload: TPayload | None = None, **fields: Any) -> tuple[str, TPayload]:
        """Send one request and wait for its reply; an Error reply raises RemoteError."""
        rid = next(self._rids)
        event, box = trio.Event(), []
        self._waiting[rid] = (event, box)
        if self.closed_reason is not None:
            raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code)
        try:
            await self._channel.send(wp.make_frame(op, payload, rid=rid, **fields))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed) as exc:
            self._waiting.pop(rid, None)
            raise RemoteError(f"connection closed: {exc}", Code.UNAVAILABLE) from None
        await event.wait()
        if not box:
            raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code)
        reply_op, body = wp.operation_of(box[0])
        if reply_op == "error":
            code = Code(body.code) if body.code in Code._value2member_map_ else Code.INTERNAL
            raise RemoteError(body.text or "", code)
        return reply_op, body

    # --- the API ----------------------------------------------------------

    async def send(
        self,
        to: str,
        body: bytes | str,
        *,
        kind: int = KIND_NORMAL,
        ext: dict[str, str] | None = None,
        client_id: str | None = None,
    ) -> Ack:
        """Send a 1:1 message; returns once it is stored. Retrying with the same
        ``client_id`` never stores it twice."""
        client_id = client_id or uuid.uuid4().hex
        if client_id not in self._sent_set:
            if len(self._sent_ids) == self._sent_ids.maxlen:
                self._sent_set.discard(self._sent_ids[0])
            self._sent_ids.append(client_id)
            self._sent_set.add(client_id)
        data = body.encode() if isinstance(body, str) else body
        message = wp.Message(client_id=client_id, recipient=to, kind=kind, body=data, ext=ext or {})
        _, ack = await self.request("send", message=message)
        return Ack(ack.client_id, ack.conversation, ack.seq, ack.server_time, bool(ack.duplicate))

    async def send_group(
        self, group: str, body: bytes | str, *, kind: int = KIND_NORMAL, ext: dict[str, str] | None = None,
        client_id: str | None = None,
    ) -> Ack:
        """Send to a group (its id from ``GroupInfo.group``); stored once, delivered to every member."""
        client_id = client_id or uuid.uuid4().hex
        data = body.encode() if isinstance(body, str) else body
        message = wp.Message(client_id=client_id, conversation=group, kind=kind, body=data, ext=ext or {})
        _, ack = await self.request("send", message=message)
        return Ack(ack.client_id, ack.conversation, ack.seq, ack.server_time, bool(ack.duplicate))

    async def group(
        self, op: str, group: str = "", *, users: list[str] | tuple[str, ...] = (), name: str = "",
        policy: str = "", flag: bool = False, profile: dict[str, str] | None = None,
    ) -> GroupInfo:
        """Any group operation (see docs/features.md); returns the group as it is after it."""
        _, info = await self.request(
            "group_request",
            wp.GroupRequest(group=group, op=op, users=list(users), name=name, policy=policy, flag=flag,
                            profile=profile or {}),
        )
        return GroupInfo(
            info.group, info.name, info.owner, list(info.admins or []), list(info.members or []), info.policy,
            list(info.requests or []), list(info.muted or []), bool(info.all_muted), bool(info.dissolved),
            info.max_size or 0, dict(info.profile or {}),
        )

    async def create_group(self, name: str, members: list[str] | tuple[str, ...] = (), policy: str = "approval") -> GroupInfo:
        return await self.group("create", users=members, name=name, policy=policy)

    async def history(
        self,
        peer: str | None = None,
        *,
        conversation: str | None = None,
        before: int = 0,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """One page of a conversation, oldest first: the newest before ``before``
        (0 = latest), or, with ``after`` (0 = from the start), the oldest after it."""
        _, page = await self.request(
            "history", peer=peer or "", conversation=conversation or "", before_seq=before, after_seq=after, limit=limit
        )
        return HistoryPage(page.conversation, [message_from_wire(m) for m in page.messages or []], bool(page.more))

    async def events(self) -> AsyncIterator[ChatMessage]:
        """Incoming messages, offline ones first, in order, each once."""
        async for pos, message in self._events_recv:
            self._ack_pos = max(self._ack_pos, pos)
            self._ack_wanted.set()
            yield message

    async def next_message(self, timeout: float | None = None) -> ChatMessage:
        """The next incoming message (raises TooSlowError after ``timeout`` seconds)."""
        with trio.fail_after(timeout) if timeout else _null():
            try:
                pos, message = await self._events_recv.receive()
            except trio.EndOfChannel:
                raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code) from None
        self._ack_pos = max(self._ack_pos, pos)
        self._ack_wanted.set()
        return message

    # --- notices: presence, receipts, signals, stream data, roster changes -------

    async def notices(self) -> AsyncIterator[Notice]:
        """Pushes that are not stored messages, as they come (not replayed later)."""
        async for notice in self._notices_recv:
            yield notice

    async def next_notice(self, of: type | tuple[type, ...] | None = None, timeout: float | None = None) -> Notice:
        """The next notice (of the given type(s), others skipped); TooSlowError after ``timeout``."""
        with trio.fail_after(timeout) if timeout else _null():
            while True:
                try:
                    notice = await self._notices_recv.receive()
                except trio.EndOfChannel:
                    raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code) from None
                if of is None or isinstance(notice, of):
                    return notice

    # --- roster --------------------------------------------------------------

    async def roster(self, op: str = "list", user: str = "") -> Roster:
        """Any roster operation (list, request, accept, reject, remove, block,
        unblock); returns this user's roster after it."""
        _, r = await self.request("roster_request", wp.thrift.RosterRequest(op=op, user=user))
        return _roster(r)

    async def add_friend(self, user: str) -> Roster:
        return await self.roster("request", user)

    async def accept_friend(self, user: str) -> Roster:
        return await self.roster("accept", user)

    async def block(self, user: str) -> Roster:
        return await self.roster("block", user)

    # --- presence ------------------------------------------------------------

    async def set_presence(self, status: str = "online", text: str = "", invisible: bool = False) -> None:
        await self.request("presence_set", status=status, text=text, invisible=invisible)

    async def presence(self, users: list[str] | tuple[str, ...], *, subscribe: bool = False,
                       unsubscribe: bool = False) -> list[Presence]:
        _, found = await self.request("presence_query", users=list(users), subscribe=subscribe, unsubscribe=unsubscribe)
        return [_presence(p) for p in found.users or []]

    # --- signals, receipts, unread -----------------------------------------------

    async def signal(self, *, to: str = "", conversation: str = "", kind: str = "typing", data: bytes = b"") -> None:
        """A signal that is never stored (typing, ...) to a user or a conversation's members."""
        await self.request("signal", to=to, conversation=conversation, kind=kind, data=data)

    async def typing(self, to: str = "", conversation: str = "") -> None:
        await self.signal(to=to, conversation=conversation, kind="typing")

    async def receipt(self, conversation: str, seq: int, *, read: bool = True) -> None:
        """Tell the other members this user has read (or received) the conversation up to ``seq``."""
        await self.request("receipt", conversation=conversation, seq=seq, read=read)

    async def unread(self) -> Unread:
        _, u = await self.request("unread_request")
        return Unread(dict(u.counts or {}), dict(u.read or {}))

    # --- message kinds -----------------------------------------------------------

    async def recall(self, seq: int, *, to: str = "", group: str = "") -> Ack:
        """Recall message ``seq`` of the 1:1 conversation with ``to`` (or of ``group``)."""
        return await self._acting(KIND_RECALL, seq, b"", to, group)

    async def edit(self, seq: int, body: bytes | str, *, to: str = "", group: str = "") -> Ack:
        """Replace the body of one's own message ``seq``."""
        return await self._acting(KIND_EDIT, seq, body, to, group)

    async def _acting(self, kind: int, seq: int, body: bytes | str, to: str, group: str) -> Ack:
        ext = {"target": str(seq)}
        if group:
            return await self.send_group(group, body, kind=kind, ext=ext)
        return await self.send(to, body, kind=kind, ext=ext)

    # --- rooms and streams -------------------------------------------------------

    async def room(self, op: str, room: str) -> RoomInfo:
        """enter, leave or members of a room."""
        _, info = await self.request("room_request", wp.thrift.RoomRequest(room=room, op=op))
        return RoomInfo(info.room or "", list(info.members or []))

    async def enter_room(self, room: str) -> RoomInfo:
        return await self.room("enter", room)

    async def leave_room(self, room: str) -> RoomInfo:
        return await self.room("leave", room)

    async def stream(self, room: str, data: bytes, *, confirm: bool = False) -> None:
        """Stream data to everyone else in the room; not stored. Without
        ``confirm`` it is sent without waiting (errors arrive as the connection's
        last error); with it, the node's answer is awaited."""
        if confirm:
            await self.request("stream", room=room, data=data)
            return
        await self._channel.send(wp.make_frame("stream", rid=0, room=room, data=data))

    # --- profiles ------------------------------------------------------------------

    async def profile(self, user: str = "") -> Profile:
        """A user's profile (one's own by default)."""
        _, p = await self.request("profile_request", user=user)
        return Profile(p.user or "", p.nickname or "", p.avatar or "", dict(p.fields or {}))

    async def set_profile(self, **changes: str) -> Profile:
        """Change one's own profile: nickname=..., avatar=..., any other field (custom); "" removes it."""
        _, p = await self.request("profile_request", changes=changes)
        return Profile(p.user or "", p.nickname or "", p.avatar or "", dict(p.fields or {}))

    @property
    def position(self) -> int:
        """The inbox position of the last message taken from this client; pass it
        as ``resume_after`` when reconnecting."""
        return self._ack_pos

    async def wait_synced(self) -> None:
        """Wait until the offline messages of the login have all arrived."""
        await self._synced.wait()

    async def ping(self) -> None:
        await self.request("ping", nonce=1)

    async def logout(self) -> None:
        """Revoke this session's token; the connection stays open but logged out."""
        await self._flush_acks()
        await self.request("logout")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._flush_acks()
            self._nursery.cancel_scope.cancel()
            try:
                await self._channel.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
                pass


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@asynccontextmanager
async def _open_channel(url: str | Connector) -> AsyncIterator[Any]:
    if callable(url):  # a stream the caller opens (timpy.testing's in-memory clients): TCP framing over it
        stream = await url()
    else:
        parts = urlparse(url)
        if parts.scheme in ("ws", "wss"):
            async with trio_websocket.open_websocket_url(url, max_message_size=CLIENT_MAX_FRAME) as ws:
                yield _WsChannel(ws)
            return
        if parts.scheme != "tcp":
            raise ValueError(f"unsupported URL {url!r}: use tcp://HOST:PORT or ws://HOST:PORT/")
        if not parts.hostname or not parts.port:
            raise ValueError(f"expected tcp://HOST:PORT, got {url!r}")
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    channel = _TcpChannel(stream)
    try:
        yield channel
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()


@asynccontextmanager
async def _session(url: str | Connector) -> AsyncIterator[Client]:
    with unwrap_single_error():
        async with _open_channel(url) as channel, trio.open_nursery() as nursery:
            async with _client(channel, nursery) as client:
                yield client


@asynccontextmanager
async def _client(channel: Any, nursery: trio.Nursery) -> AsyncIterator[Client]:
    client = Client(channel, nursery)
    nursery.start_soon(client._reader)
    try:
        _, welcome = await client.request("hello", version=wp.PROTOCOL_VERSION, agent="timpy-python")
        client.node_id, client.max_body = welcome.node_id, welcome.max_body
        yield client
    finally:
        await client.aclose()


async def register(url: str | Connector, user: str, password: str) -> None:
    """Create an account on the cluster at ``url``."""
    async with _session(url) as client:
        await client.request("register_", name=user, password=password)


@asynccontextmanager
async def connect(
    url: str | Connector,
    user: str | None = None,
    password: str | None = None,
    *,
    token: str | None = None,
    device: str | None = None,
    create: bool = False,
    sync: bool = True,
    resume_after: int = 0,
    device_kind: str = "",
) -> AsyncIterator[Client]:
    """Connect and log in with a password or a token.

    ``url`` is ``tcp://HOST:PORT`` or ``ws://HOST:PORT/``, or a ``Connector``:
    an async function returning a ``trio.abc.Stream`` to a node's gateway that
    carries the TCP framing (``timpy.testing`` clients use in-memory streams).

    ``device`` names this terminal: the node remembers per device what it has
    delivered, so use a stable name per installation (default "default"; with a
    token, the device the token was issued to). ``create=True``
    registers the account first if it does not exist. ``resume_after`` is the
    ``position`` of an earlier connection of this device (to this node or any
    other): deliveries at or before it are dropped, so a reconnecting
    program sees each message once even when its last acknowledgements were
    lost with the old connection. ``device_kind`` ("mobile", "desktop",
    "web", ...) is what terminal limits per kind count.
    """
    async with _session(url) as client:
        client._last_pos = client._ack_pos = client._acked_pos = max(0, resume_after)
        if create and user and password:
            try:
                await client.request("register_", name=user, password=password)
            except RemoteError as exc:
                if exc.code != Code.USER_EXISTS:
                    raise
        if token:
            _, ok = await client.request(
                "token_login", token=token, device=device or "", no_sync=not sync, device_kind=device_kind
            )
        elif user and password is not None:
            _, ok = await client.request(
                "login", name=user, password=password, device=device or "default", no_sync=not sync,
                device_kind=device_kind,
            )
        else:
            raise ValueError("connect needs user and password, or token")
        client.user, client.token, client.device = ok.user, ok.token, ok.device
        client._nursery.start_soon(client._acker)
        if not sync:
            client._synced.set()
        yield client
