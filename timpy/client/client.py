"""The Python client library.

``async with timpy.connect(url, user, password) as client:`` opens a
connection (``tcp://HOST:PORT``, ``ws://HOST:PORT/``, or in TLS
``tcps://HOST:PORT``, ``wss://HOST:PORT/``), logs in, receives the messages
that arrived while this device was away, and then yields live ones from
``client.events()``. Every message handed to the program is acknowledged to
the node, so it is not delivered to this device again; deliveries are
deduplicated by inbox position, so none is handed over twice.

Given several URLs (nodes of one cluster), the client fails over: when its
connection closes it connects to the next node (bounded retries with
backoff), logs in again with its token, resumes the inbox after the last
position it saw, and retries the requests that were waiting, sends with the
same client id (so none is stored twice).
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import trio
import trio_websocket
from thriftpy2.thrift import TPayload

from timpy.client import files
from timpy.concurrency import unwrap_single_error
from timpy.errors import Code, RemoteError, TimpyError
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes
from timpy.wire.messages import (
    KIND_BURN,
    KIND_DELETED,
    KIND_EDIT,
    KIND_FILE,
    KIND_NORMAL,
    KIND_REACT,
    KIND_RECALL,
    Ack,
    ChatMessage,
    FileRef,
    Presence,
    Receipt,
    Roster,
    Signal,
    StreamData,
    ack_of,
    apply_reaction,
    message_from_wire,
    notices_of,
    presences_of,
    roster_of,
)

CLIENT_MAX_FRAME = 64 * 1024 * 1024
ACK_INTERVAL = 0.05
CONNECT_TIMEOUT = 10.0  # seconds for one connection attempt: TCP/TLS, hello and login
CLOSE_TIMEOUT = 2.0  # seconds a closing connection waits for the node's goodbye
FAILOVER_WITHIN = 30.0  # seconds a client keeps trying the nodes it was given before it gives up
FAILOVER_ATTEMPTS = 50
_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)  # seconds between rounds of attempts, then 2 s
# Requests that may be sent again after a connection was lost: reads, and
# sends (deduplicated by their client id). Others (group changes, ...) fail
# with UNAVAILABLE: their outcome is unknown.
_RETRY_SAFE = frozenset({"send", "history", "ping", "unread_request", "presence_query", "receipt", "sync",
                         "upload_chunk", "upload_finish", "attachment_request", "chunk_request",
                         "conversation_list", "conversation_set", "search", "thread_request"})
# A node that closed the connection for one of these reasons would do it again.
_FINAL = frozenset({Code.KICKED, Code.ACCOUNT_DISABLED, Code.BAD_CREDENTIALS, Code.TOKEN_INVALID, Code.TOKEN_EXPIRED,
                    Code.VERSION_UNSUPPORTED})

log = logging.getLogger("timpy.client")
SCHEMES = ("tcp", "tcps", "ws", "wss")


class UrlError(ValueError):
    """A node URL the client cannot use."""


class TlsError(ConnectionError):
    """The TLS handshake with a node failed (untrusted certificate, wrong
    server name, no TLS on that port); the text says which and what to do."""


def fold_reaction(messages: list[ChatMessage], reaction: ChatMessage) -> bool:
    """Fold a live reaction (a ``KIND_REACT`` message from ``events()``) into
    the messages a program shows: the one it acts on gets its ``reactions``
    updated in place. Returns whether one did (False: not a reaction, or its
    message is not in ``messages``). Applying one twice, or out of order,
    gives the same reactions (the node orders them by their seq)."""
    for i, m in enumerate(messages):
        changed = apply_reaction(m, reaction)
        if changed is not m:
            messages[i] = changed
            return True
    return False


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


@dataclass(frozen=True)
class Pusher:
    """Where a push gateway wakes a device (``Client.set_pusher``)."""

    app_id: str
    pushkey: str
    url: str
    data: dict[str, str]
    this_device: bool


@dataclass(frozen=True)
class ConversationEntry:
    """One conversation of the list; also a notice when it changes."""

    conversation: str
    group: bool
    peer: str  # the other user of a 1:1 conversation
    name: str  # a group's name
    last: ChatMessage | None  # the newest message shown
    last_time: int  # ms since the epoch of the newest activity
    unread: int
    mentions: int
    muted: bool
    pinned: bool
    archived: bool
    read_seq: int


@dataclass(frozen=True)
class ConversationPage:
    entries: list[ConversationEntry]
    total: int  # entries in the whole list (archived ones, or the others)
    more: bool


@dataclass(frozen=True)
class ThreadInfo:
    root: int  # the root message's seq
    thread: str  # the thread's conversation id
    count: int  # messages in the thread


@dataclass(frozen=True)
class SearchHit:
    conversation: str
    seq: int
    server_time: int


@dataclass(frozen=True)
class SearchResults:
    hits: list[SearchHit]  # newest first
    count: int  # hits in all
    more: bool


#: What ``Client.notices()`` yields: pushes that are not stored messages.
Notice = Roster | Presence | Receipt | Signal | StreamData | ConversationEntry


def _entry(e: TPayload) -> ConversationEntry:
    return ConversationEntry(
        e.conversation or "", bool(e.group), e.peer or "", e.name or "",
        message_from_wire(e.last) if e.last is not None else None, e.last_time or 0, e.unread or 0,
        e.mentions or 0, bool(e.muted), bool(e.pinned), bool(e.archived), e.read_seq or 0,
    )


def _notices_of(op: str, body: TPayload) -> list[Notice]:
    if op == "conversation_entry":
        return [_entry(body)]
    return list(notices_of(op, body))


def _with_reply(
    ext: dict[str, str] | None, reply_to: int | None, mentions: Sequence[str], thread: int | None = None
) -> dict[str, str]:
    out = dict(ext or {})
    if thread is not None:
        out["thread"] = str(thread)
    if reply_to is not None:
        out["reply_to"] = str(reply_to)
    if mentions:
        out["mentions"] = ",".join(mentions)
    return out


#: Opens a byte stream to a node, for ``connect`` and ``register`` in place of a URL.
Connector = Callable[[], Awaitable[trio.abc.Stream]]
Target = str | Connector  # a node URL, or a Connector


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


class _Lost(Exception):
    """The connection a request went out on closed before its answer came."""

    def __init__(self, over: trio.Event) -> None:
        super().__init__("connection lost")
        self.over = over  # set once the reader of that connection has finished


class Client:
    """A logged-in connection to a node (or, given several URLs, to one of
    them at a time). Create it with ``connect``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        urls: Sequence[Target] = (),
        *,
        ca: str | Path | None = None,
        failover: bool = False,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._channel: Any = None
        self._nursery = nursery
        self._urls = list(urls)
        self._url_index = 0
        self._ca = ca
        self._failover = failover
        self._on_status = on_status
        self._login: dict[str, Any] | None = None  # how to log in again after a failover
        self._state = "connecting"  # connecting, up, failing_over, closed
        self._connected = trio.Event()  # set while up, and once closed for good
        self._conn_scope: trio.CancelScope | None = None
        self._conn_over = trio.Event()
        self._closing = False
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
        self.url: Target = ""  # the node this client is connected to now
        self.reconnects = 0  # failovers so far
        self.user = ""
        self.token = ""
        self.device = ""
        self.node_id = ""
        self.max_body = 0

    # --- plumbing -------------------------------------------------------

    def _status(self, text: str) -> None:
        log.info("%s", text)
        if self._on_status is not None:
            self._on_status(text)

    async def _connection(self, url: Target, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One connection: its channel lives as long as this task, which its
        reader ends."""
        with trio.CancelScope() as scope:
            async with _open_channel(url, self._ca) as channel:
                over = trio.Event()
                self._channel, self._conn_scope, self._conn_over, self.url = channel, scope, over, url
                self.closed_reason, self.closed_code = None, Code.UNAVAILABLE
                task_status.started()
                await self._reader(over)

    async def _reader(self, over: trio.Event) -> None:
        channel = self._channel
        try:
            while True:
                frame = await channel.receive()
                if frame is None:
                    break
                self._dispatch(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed, TimpyError) as exc:
            # The node's own reason (an error frame just before it closed) says more than the socket's end.
            self.closed_reason = self.closed_reason or str(exc)
        finally:
            self.closed_reason = self.closed_reason or "the node closed the connection"
            waiting, self._waiting = self._waiting, {}
            if self._state == "up":
                if self._failover and not self._closing and self.closed_code not in _FINAL:
                    self._state = "failing_over"
                    self._connected = trio.Event()
                    self._nursery.start_soon(self._fail_over, self.closed_reason)
                else:
                    self._end()
            over.set()
            for event, _ in waiting.values():
                event.set()

    def _end(self) -> None:
        """Closed for good: no more events, and every request fails."""
        self._state = "closed"
        self._events_send.close()
        self._notices_send.close()
        self._synced.set()
        self._connected.set()

    async def _open(self, url: Target) -> None:
        """Connect to ``url``, say hello and (after the first time) log in."""
        await self._nursery.start(self._connection, url)
        try:
            _, welcome = await self._call("hello", version=wp.PROTOCOL_VERSION, agent="timpy-python")
            self.node_id, self.max_body = welcome.node_id, welcome.max_body
            if self._login is not None:
                await self._log_in()
        except _Lost:
            raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code) from None
        except BaseException:
            if self._conn_scope is not None:
                self._conn_scope.cancel()
            raise

    async def _log_in(self) -> None:
        login = self._login
        assert login is not None
        ok = None
        if self.token:
            try:
                _, ok = await self._ask(
                    "token_login", token=self.token, device=self.device, no_sync=login["no_sync"],
                    device_kind=login["device_kind"],
                )
            except RemoteError as exc:
                if exc.code not in (Code.TOKEN_EXPIRED, Code.TOKEN_INVALID) or login["password"] is None:
                    raise
        if ok is None:
            _, ok = await self._ask(
                "login", name=login["name"], password=login["password"], device=self.device or "default",
                no_sync=login["no_sync"], device_kind=login["device_kind"],
            )
        self.user, self.token, self.device = ok.user, ok.token, ok.device

    async def _fail_over(self, reason: str) -> None:
        """Connect to the next node (then the one after, ...) with backoff,
        log in again and resume; give up after FAILOVER_WITHIN seconds."""
        self._status(f"lost the connection to {self.url} ({reason}); reconnecting")
        last = reason
        n = len(self._urls)
        with trio.move_on_after(FAILOVER_WITHIN):
            for attempt in range(FAILOVER_ATTEMPTS):
                if attempt and attempt % n == 0:
                    await trio.sleep(_BACKOFF[min(attempt // n - 1, len(_BACKOFF) - 1)])
                index = (self._url_index + 1 + attempt) % n
                url = self._urls[index]
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        await self._open(url)
                except (OSError, trio.TooSlowError, TimpyError, trio_websocket.HandshakeError) as exc:
                    last = f"{url}: {_reason(exc)}"
                    if isinstance(exc, TlsError) or getattr(exc, "code", None) in _FINAL:
                        break
                    continue
                self._url_index = index
                self.reconnects += 1
                self._acked_pos = 0  # the new node may have missed the last acknowledgements
                if self._ack_pos:
                    self._ack_wanted.set()
                self._state = "up"
                self._connected.set()
                self._status(f"reconnected to {url}")
                return
        self.closed_reason = f"no node answered within {FAILOVER_WITHIN:g} s ({last})"
        self._status(f"gave up reconnecting: {self.closed_reason}")
        self._end()

    def _dispatch(self, frame: TPayload) -> None:
        rid = frame.rid or 0
        op, body = wp.operation_of(frame)
        if op == "delivery":
            self._on_delivery(body)
            return
        if op == "sync_done":
            self._synced.set()
        if rid == 0 and op in ("roster", "presence_list", "receipt", "signal", "stream", "conversation_entry"):
            for notice in _notices_of(op, body):
                try:
                    self._notices_send.send_nowait(notice)
                except (trio.WouldBlock, trio.ClosedResourceError):
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
            if pos <= self._ack_pos:
                self._ack_wanted.set()  # taken already (before a reconnect): acknowledge it here too
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
        try:
            self._events_send.send_nowait((pos, message))
        except trio.ClosedResourceError:
            pass

    async def _acker(self) -> None:
        # Idle until something needs acknowledging, then batch for ACK_INTERVAL:
        # thousands of idle clients in one program cost nothing.
        while True:
            await self._ack_wanted.wait()
            await trio.sleep(ACK_INTERVAL)
            self._ack_wanted = trio.Event()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        if self._ack_pos > self._acked_pos and self._state == "up":
            pos = self._ack_pos
            try:
                await self._channel.send(wp.make_frame("delivery_ack", pos=pos))
                self._acked_pos = pos
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
                pass

    async def _call(self, op: str, payload: TPayload | None = None, **fields: Any) -> tuple[str, TPayload]:
        """One request on the current connection; _Lost if it closes first."""
        rid = next(self._rids)
        event, box = trio.Event(), []
        over = self._conn_over
        self._waiting[rid] = (event, box)
        try:
            await self._channel.send(wp.make_frame(op, payload, rid=rid, **fields))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
            self._waiting.pop(rid, None)
            if self._conn_scope is not None:
                self._conn_scope.cancel()  # the reader finishes this connection
            raise _Lost(over) from None
        await event.wait()
        if not box:
            raise _Lost(over)
        reply_op, body = wp.operation_of(box[0])
        if reply_op == "error":
            code = Code(body.code) if body.code in Code._value2member_map_ else Code.INTERNAL
            raise RemoteError(body.text or "", code)
        return reply_op, body

    async def _ask(self, op: str, payload: TPayload | None = None, **fields: Any) -> tuple[str, TPayload]:
        """One request on the current connection, no failover."""
        try:
            return await self._call(op, payload, **fields)
        except _Lost:
            raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code) from None

    async def request(self, op: str, payload: TPayload | None = None, **fields: Any) -> tuple[str, TPayload]:
        """Send one request and wait for its reply; an Error reply raises RemoteError.

        With failover, a request that is safe to repeat (reads; sends, by
        their client id) is sent again on the next connection."""
        for _ in range(FAILOVER_ATTEMPTS):
            await self._connected.wait()
            if self._state == "closed":
                break
            try:
                return await self._call(op, payload, **fields)
            except _Lost as lost:
                await lost.over.wait()
                if op not in _RETRY_SAFE or self._state == "closed":
                    break
        raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code)

    # --- the API ----------------------------------------------------------

    async def send(
        self,
        to: str,
        body: bytes | str,
        *,
        kind: int = KIND_NORMAL,
        ext: dict[str, str] | None = None,
        client_id: str | None = None,
        reply_to: int | None = None,
        mentions: Sequence[str] = (),
        thread: int | None = None,
    ) -> Ack:
        """Send a 1:1 message; returns once it is stored. Retrying with the same
        ``client_id`` never stores it twice. ``reply_to``: the seq of the message
        this answers; ``mentions``: user names (or "@all" in a group);
        ``thread``: the seq of the root message whose thread this goes to (the
        ack's conversation is then the thread's id)."""
        ext = _with_reply(ext, reply_to, mentions, thread)
        client_id = client_id or uuid.uuid4().hex
        if client_id not in self._sent_set:
            if len(self._sent_ids) == self._sent_ids.maxlen:
                self._sent_set.discard(self._sent_ids[0])
            self._sent_ids.append(client_id)
            self._sent_set.add(client_id)
        data = body.encode() if isinstance(body, str) else body
        message = wp.Message(client_id=client_id, recipient=to, kind=kind, body=data, ext=ext or {})
        _, ack = await self.request("send", message=message)
        return ack_of(ack)

    async def send_group(
        self, group: str, body: bytes | str, *, kind: int = KIND_NORMAL, ext: dict[str, str] | None = None,
        client_id: str | None = None, reply_to: int | None = None, mentions: Sequence[str] = (),
        thread: int | None = None,
    ) -> Ack:
        """Send to a group (its id from ``GroupInfo.group``); stored once, delivered to every member."""
        ext = _with_reply(ext, reply_to, mentions, thread)
        client_id = client_id or uuid.uuid4().hex
        data = body.encode() if isinstance(body, str) else body
        message = wp.Message(client_id=client_id, conversation=group, kind=kind, body=data, ext=ext or {})
        _, ack = await self.request("send", message=message)
        return ack_of(ack)

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
        return roster_of(r)

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
        return presences_of(found)

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

    async def replied_to(self, message: ChatMessage) -> ChatMessage | None:
        """The message ``message`` replies to (to show it quoted), or None when
        it is not a reply or its target is gone."""
        raw = message.ext.get("reply_to", "")
        if not raw.isdigit():
            return None
        page = await self.history(conversation=message.conversation, after=int(raw) - 1, limit=1)
        return page.messages[0] if page.messages and page.messages[0].seq == int(raw) else None

    async def threads(self, roots: Sequence[int], *, peer: str = "", group: str = "") -> list[ThreadInfo]:
        """The threads under root messages of the 1:1 conversation with ``peer``
        (or of ``group``): their ids (read them with ``history``) and counts."""
        _, t = await self.request("thread_request", peer=peer, conversation=group, roots=list(roots))
        return [ThreadInfo(x.root or 0, x.thread or "", x.count or 0) for x in t.threads or []]

    # --- conversation list and search ---------------------------------------------

    async def conversations(self, *, offset: int = 0, limit: int = 50, archived: bool = False) -> ConversationPage:
        """A page of this user's conversations (1:1 and groups): pinned first,
        then the newest activity first; ``archived`` lists the archived ones."""
        _, p = await self.request("conversation_list", offset=offset, limit=limit, archived=archived)
        return ConversationPage([_entry(e) for e in p.entries or []], p.total or 0, bool(p.more))

    async def set_conversation(
        self, conversation: str, *, muted: bool | None = None, pinned: bool | None = None,
        archived: bool | None = None,
    ) -> ConversationEntry:
        """Set this user's flags of a conversation (None: unchanged); returns its entry."""
        _, e = await self.request(
            "conversation_set", conversation=conversation, muted=muted, pinned=pinned, archived=archived
        )
        return _entry(e)

    async def search(self, query: str, *, conversation: str = "", offset: int = 0, limit: int = 50) -> SearchResults:
        """Messages of this user's conversations (or of one) holding every word
        of ``query`` (as prefixes), newest first; fetch them with ``history``."""
        _, r = await self.request("search", query=query, conversation=conversation, offset=offset, limit=limit)
        return SearchResults(
            [SearchHit(h.conversation or "", h.seq or 0, h.server_time or 0) for h in r.hits or []],
            r.count or 0, bool(r.more),
        )

    # --- message kinds -----------------------------------------------------------

    async def recall(self, seq: int, *, to: str = "", group: str = "", thread: int | None = None) -> Ack:
        """Recall message ``seq`` of the 1:1 conversation with ``to`` (or of
        ``group``; or of the thread under their message ``thread``)."""
        return await self._acting(KIND_RECALL, seq, b"", to, group, thread)

    async def edit(
        self, seq: int, body: bytes | str, *, to: str = "", group: str = "", thread: int | None = None
    ) -> Ack:
        """Replace the body of one's own message ``seq``."""
        return await self._acting(KIND_EDIT, seq, body, to, group, thread)

    async def react(self, seq: int, key: str, *, to: str = "", group: str = "", thread: int | None = None) -> Ack:
        """React with ``key`` (an emoji or a short word) to message ``seq`` of
        the 1:1 conversation with ``to`` (or of ``group``). Every member sees it
        live, and in ``ChatMessage.reactions`` from history and sync."""
        return await self._acting(KIND_REACT, seq, b"", to, group, thread, {"key": key, "on": "1"})

    async def unreact(self, seq: int, key: str, *, to: str = "", group: str = "", thread: int | None = None) -> Ack:
        """Take back one's reaction ``key`` to message ``seq``."""
        return await self._acting(KIND_REACT, seq, b"", to, group, thread, {"key": key, "on": "0"})

    async def _acting(
        self, kind: int, seq: int, body: bytes | str, to: str, group: str, thread: int | None = None,
        more: dict[str, str] | None = None,
    ) -> Ack:
        ext = {"target": str(seq), **(more or {})}
        if group:
            return await self.send_group(group, body, kind=kind, ext=ext, thread=thread)
        return await self.send(to, body, kind=kind, ext=ext, thread=thread)

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
        try:
            await self._channel.send(wp.make_frame("stream", rid=0, room=room, data=data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
            raise RemoteError(f"connection closed: {self.closed_reason}", self.closed_code) from None

    # --- profiles ------------------------------------------------------------------

    async def profile(self, user: str = "") -> Profile:
        """A user's profile (one's own by default)."""
        _, p = await self.request("profile_request", user=user)
        return Profile(p.user or "", p.nickname or "", p.avatar or "", dict(p.fields or {}))

    async def set_profile(self, **changes: str) -> Profile:
        """Change one's own profile: nickname=..., avatar=..., any other field (custom); "" removes it."""
        _, p = await self.request("profile_request", changes=changes)
        return Profile(p.user or "", p.nickname or "", p.avatar or "", dict(p.fields or {}))

    # --- files ---------------------------------------------------------------------

    async def upload(
        self, source: bytes | str | Path, *, name: str | None = None, mime: str | None = None,
        progress: files.Progress | None = None, upload_id: str = "",
    ) -> files.Attachment:
        """Upload a file (a path) or bytes in chunks; ``progress(done, total)``
        after each chunk. With ``upload_id`` (``begin_upload``'s) resume that
        upload: only the chunks the node lacks are sent."""
        return await files.upload(self.request, files.Source(source, name, mime), upload_id, progress)

    async def begin_upload(
        self, source: bytes | str | Path, *, name: str | None = None, mime: str | None = None
    ) -> str:
        """Start an upload and return its id, to pass to ``upload(..., upload_id=)``."""
        src = files.Source(source, name, mime)
        _, state = await self.request(
            "upload_start", name=src.name, size=src.size, mime=src.mime, sha256=src.sha256
        )
        return str(state.upload_id)

    async def download(
        self, attachment: str | files.Attachment | FileRef, dest: str | Path | None = None, *,
        progress: files.Progress | None = None,
    ) -> bytes | Path:
        """A file's content (or written to ``dest``), its SHA-256 checked
        (``HashMismatch`` if it differs)."""
        att = attachment if isinstance(attachment, str) else (
            attachment.attachment if isinstance(attachment, FileRef) else attachment.id
        )
        return await files.download(self.request, att, dest, progress)

    async def attachment(self, attachment: str) -> files.Attachment:
        """What a file is (name, size, type, hash), if you may read it."""
        _, body = await self.request("attachment_request", wp.thrift.AttachmentRequest(id=attachment, op="info"))
        return files.attachment_of(body)

    async def file_url(self, attachment: str) -> files.Attachment:
        """The file with ``url``: a signed, short-lived path on the node's HTTP
        (admin) listener for browsers, with range requests."""
        _, body = await self.request("attachment_request", wp.thrift.AttachmentRequest(id=attachment, op="url"))
        return files.attachment_of(body)

    async def send_file(
        self, attachment: files.Attachment, *, to: str = "", group: str = "", thumbnail: bytes = b"",
        burn: bool = False, client_id: str | None = None, thread: int | None = None,
    ) -> Ack:
        """Send a file message referencing an uploaded file to ``to`` (or ``group``;
        ``thread``: into the thread under that root message); its members may
        download the file from then on."""
        ref = FileRef(attachment.id, attachment.name, attachment.size, attachment.mime, attachment.sha256, thumbnail)
        kind, ext = (KIND_BURN, {"file": "1"}) if burn else (KIND_FILE, {})
        if group:
            return await self.send_group(group, ref.pack(), kind=kind, ext=ext, client_id=client_id, thread=thread)
        return await self.send(to, ref.pack(), kind=kind, ext=ext, client_id=client_id, thread=thread)

    # --- pushers (push to offline devices) --------------------------------------------

    async def set_pusher(self, app_id: str, pushkey: str, url: str, data: dict[str, str] | None = None) -> list[Pusher]:
        """Have this device woken through the Matrix push gateway at ``url``
        (``.../_matrix/push/v1/notify``) when a message reaches it while it is
        offline; returns the account's pushers."""
        return await self._pushers("set", app_id, pushkey, url, data or {})

    async def remove_pusher(self, app_id: str, pushkey: str) -> list[Pusher]:
        return await self._pushers("remove", app_id, pushkey)

    async def pushers(self) -> list[Pusher]:
        return await self._pushers("list")

    async def _pushers(self, op: str, app_id: str = "", pushkey: str = "", url: str = "",
                       data: dict[str, str] | None = None) -> list[Pusher]:
        _, reply = await self.request("pusher_request", wp.thrift.PusherRequest(
            op=op, app_id=app_id, pushkey=pushkey, url=url, data=data or {}))
        return [Pusher(p.app_id or "", p.pushkey or "", p.url or "", dict(p.data or {}), bool(p.this_device))
                for p in reply.pushers or []]

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
        self._closing = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._flush_acks()
                if self._channel is not None:
                    try:
                        await self._channel.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
                        pass
            self._nursery.cancel_scope.cancel()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def parse_url(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a node URL; UrlError naming the accepted forms."""
    accepted = "tcp://HOST:PORT, tcps://HOST:PORT, ws://HOST:PORT/ or wss://HOST:PORT/"
    parts = urlparse(str(url))
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise UrlError(f"{url!r} is not a node URL: use {accepted}")
    try:
        port = parts.port
    except ValueError:
        raise UrlError(f"{url!r} has no valid port: use {accepted}") from None
    if port is None and parts.scheme in ("tcp", "tcps"):
        raise UrlError(f"{url!r} names no port: use {accepted}")
    return parts.scheme, parts.hostname, port


def tls_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """The client's TLS context: the system's trusted CAs, or only the PEM CA
    file ``ca`` (a private CA); server names are always checked."""
    if ca is None:
        return ssl.create_default_context()
    path = Path(ca)
    if not path.is_file():
        raise TlsError(f"the CA file {path} does not exist")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"the CA file {path} holds no PEM CA certificate ({exc})") from None


def _tls_failure(url: str, host: str, exc: BaseException) -> TlsError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return TlsError(
                f"{url}: the node's certificate is not valid for the name {host!r} ({cause.verify_message}); "
                "connect with a name the certificate was issued to"
            )
        return TlsError(
            f"{url}: the node's certificate is not trusted ({cause.verify_message}); if the cluster uses a "
            "private CA, pass its certificate: ca=FILE (timpy chat --ca FILE)"
        )
    reason = getattr(cause, "reason", None) or str(cause or exc)
    return TlsError(f"{url}: the TLS handshake failed ({reason}); does the node serve TLS on that port (tls_cert)?")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimpyError):
        return exc.text
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def _open_channel(url: str | Connector, ca: str | Path | None = None) -> AsyncIterator[Any]:
    if callable(url):  # a stream the caller opens (timpy.testing's in-memory clients): TCP framing over it
        channel = _TcpChannel(await url())
        try:
            yield channel
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()
        return
    scheme, host, port = parse_url(url)
    if scheme == "ws":
        opened = False
        try:
            async with trio_websocket.open_websocket_url(
                url, max_message_size=CLIENT_MAX_FRAME, connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as ws:
                opened = True
                yield _WsChannel(ws)
        except trio_websocket.HandshakeError as exc:
            if opened:
                raise
            cause = exc.__cause__ or exc.__context__
            raise ConnectionError(f"{url}: {cause or 'the WebSocket handshake failed'}") from None
        return
    default_port = 443 if scheme == "wss" else 0
    if scheme in ("tcps", "wss"):
        stream: trio.abc.Stream = await _tls_stream(url, host, port or default_port, tls_context(ca))
    else:
        assert port is not None
        stream = await trio.open_tcp_stream(host, port)
    if scheme == "wss":
        # The TLS handshake is done (and its failure explained) before the
        # WebSocket one, which would report it only as a timeout.
        parts = urlparse(url)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if port in (None, 443) else f"{host}:{port}"
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, host_header, resource, max_message_size=CLIENT_MAX_FRAME
                    )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            try:
                yield _WsChannel(ws)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
        return
    channel = _TcpChannel(stream)  # type: ignore[arg-type]
    try:
        yield channel
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()


async def _tls_stream(url: str, host: str, port: int, context: ssl.SSLContext) -> trio.SSLStream:
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise _tls_failure(url, host, exc) from None
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise TlsError(f"{url}: no TLS handshake within {CONNECT_TIMEOUT:g} s; does the node serve TLS there?") from None
    return stream


def _url_list(url: Target | Sequence[Target]) -> list[Target]:
    urls = [url] if isinstance(url, str) or callable(url) else list(url)
    if not urls:
        raise UrlError("no node URL given")
    for u in urls:
        if not callable(u):
            parse_url(u)
    return urls


async def register(url: Target | Sequence[Target], user: str, password: str, *, ca: str | Path | None = None) -> None:
    """Create an account on the cluster at ``url`` (the first of several that answers)."""
    async with _connected(_url_list(url), ca, None, None) as client:
        await client._ask("register_", name=user, password=password)


@asynccontextmanager
async def _connected(
    urls: list[Target], ca: str | Path | None, failover: bool | None, on_status: Callable[[str], None] | None,
    before_login: Callable[[Client], Any] | None = None,
) -> AsyncIterator[Client]:
    """A client connected (hello done) to the first of ``urls`` that answers."""
    with unwrap_single_error():
        async with trio.open_nursery() as nursery:
            client = Client(nursery, urls, ca=ca, failover=len(urls) > 1 if failover is None else failover,
                            on_status=on_status)
            try:
                for index, url in enumerate(urls):
                    try:
                        with trio.fail_after(CONNECT_TIMEOUT) if len(urls) > 1 else _null():
                            await client._open(url)
                        client._url_index = index
                        break
                    except (OSError, trio.TooSlowError, TimpyError, trio_websocket.HandshakeError) as exc:
                        if index == len(urls) - 1 or isinstance(exc, TlsError):
                            raise
                        client._status(f"{url}: {_reason(exc)}; trying {urls[index + 1]}")
                yield client
            finally:
                await client.aclose()


@asynccontextmanager
async def connect(
    url: Target | Sequence[Target],
    user: str | None = None,
    password: str | None = None,
    *,
    token: str | None = None,
    device: str | None = None,
    create: bool = False,
    sync: bool = True,
    resume_after: int = 0,
    device_kind: str = "",
    ca: str | Path | None = None,
    failover: bool | None = None,
    on_status: Callable[[str], None] | None = None,
) -> AsyncIterator[Client]:
    """Connect and log in with a password or a token.

    ``url`` is one node URL (``tcp://``, ``tcps://``, ``ws://``, ``wss://``)
    or a ``Connector`` (an async function returning a ``trio.abc.Stream`` to a
    node's gateway in the TCP framing; ``timpy.testing`` clients use in-memory
    streams), or a list of them (nodes of one cluster): the
    first that answers is used, and with several (or ``failover=True``) the
    client fails over when its connection closes: it reconnects to the next
    node (retrying with backoff for up to FAILOVER_WITHIN seconds), logs in
    again, resumes after the last inbox position it saw, and sends again the
    requests that were waiting (a send keeps its client id, so it is stored
    once). ``on_status`` is called with a sentence on each loss and
    reconnection. ``ca`` is a PEM file of the CA that signed the nodes'
    certificates, for ``tcps://`` and ``wss://`` with a private CA.

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
    if not token and not (user and password is not None):
        raise ValueError("connect needs user and password, or token")
    urls = _url_list(url)
    async with _connected(urls, ca, failover, on_status) as client:
        client._last_pos = client._ack_pos = client._acked_pos = max(0, resume_after)
        if create and user and password:
            try:
                await client._ask("register_", name=user, password=password)
            except RemoteError as exc:
                if exc.code != Code.USER_EXISTS:
                    raise
        client._login = {"name": user, "password": password, "no_sync": not sync, "device_kind": device_kind}
        client.token, client.device = token or "", device or ("" if token else "default")
        await client._log_in()
        client._state = "up"
        client._connected.set()
        client._nursery.start_soon(client._acker)
        if not sync:
            client._synced.set()
        yield client
