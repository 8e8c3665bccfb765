"""One client connection's protocol session, independent of the transport.

The transport feeds decoded frames to ``handle`` and sends what ``outbound``
yields. Errors go to this client alone, as Error frames; where the stream
cannot be trusted any more the session asks the transport to close.
"""

from __future__ import annotations

import functools
import logging
import re
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio
from thriftpy2.thrift import TPayload

from timpy.cluster.rpc import PeerUnavailable
from timpy.crypto.tokens import TokenClaims
from timpy.errors import AuthError, Code, ProtocolError, RequestError, TimpyError
from timpy.im import ids
from timpy.im.attachments import AttachmentInfo
from timpy.im.messaging import SendTicket
from timpy.im.ratelimit import TokenBucket
from timpy.im.terminals import LiveTerminal
from timpy.im.users import Identity
from timpy.wire import protocol as wp
from timpy.wire.fast import ack_bytes
from timpy.wire.messages import (
    ChatMessage,
    Delivery,
    Notice,
    Presence,
    PresenceList,
    SendResult,
    ack_frame,
    entry_to_wire,
    message_to_wire,
    notice_frame,
)

if TYPE_CHECKING:
    from timpy.gateway.services import NodeServices

log = logging.getLogger("timpy.gateway")

_CLIENT_OPS = frozenset(
    {"hello", "register_", "login", "token_login", "logout", "send", "history", "sync", "delivery_ack", "ping",
     "group_request", "roster_request", "presence_set", "presence_query", "signal", "receipt", "unread_request",
     "room_request", "stream", "profile_request", "pusher_request", "conversation_list", "conversation_set",
     "search", "thread_request", "upload_start", "upload_chunk", "upload_finish", "attachment_request",
     "chunk_request"}
)
_HANDLERS = {op: f"_op_{op.rstrip('_')}" for op in _CLIENT_OPS}  # op -> the method serving it
_DEVICE_KIND = re.compile(r"^[a-z0-9_\-]{1,16}$")
_NO_AUTH_OPS = frozenset({"hello", "register_", "login", "token_login", "ping"})


@dataclass(frozen=True)
class CloseAfter:
    """Outbound marker: flush what is queued, then close the connection."""

    reason: str


def in_users_words(exc: TimpyError, frame: TPayload) -> TimpyError:
    """A node that did not answer, named by what this request was about:
    "the node that holds alice's account did not answer ..."."""
    if not isinstance(exc, PeerUnavailable):
        return exc
    op, body = wp.operation_of(frame)
    text = exc.text
    if op in ("login", "register_") and body.name:
        text = text.replace("the account", f"{body.name}'s account", 1)
    elif op == "send" and body.message is not None and body.message.recipient:
        text = text.replace("the account", f"{body.message.recipient}'s account", 1)
        text = text.replace("the conversation", f"your conversation with {body.message.recipient}", 1)
        text = text.replace("the recipient's inbox", f"{body.message.recipient}'s inbox", 1)
    return TimpyError(text, exc.code)


class _Body:
    """One message's delivery, encoded once for all its terminals: the
    frame's bytes before and after ``pos`` (which is fixed-width), with the
    TCP length prefix kept apart."""

    __slots__ = ("message", "prefix", "head", "tail")

    def __init__(self, message: ChatMessage) -> None:
        self.message = message
        body = wp.encode(message_to_wire(message))
        self.tail = _MESSAGE_FIELD + body + b"\x00\x00"
        self.prefix = _LENGTH.pack(len(_DELIVERY_HEAD) + _POS.size + len(self.tail))
        self.head = self.prefix + _DELIVERY_HEAD  # as it goes on a TCP stream


class Encoded:
    """An outbound delivery encoded already (binary protocol); ``frame()``
    builds the frame itself for a transport that speaks the JSON mapping."""

    __slots__ = ("pos", "_body")

    def __init__(self, pos: int, body: _Body) -> None:
        self.pos = pos
        self._body = body

    @property
    def data(self) -> bytes:
        """The frame's body (a WebSocket message)."""
        b = self._body
        return b"".join((_DELIVERY_HEAD, _POS.pack(self.pos), b.tail))

    def wire(self) -> bytes:
        """The frame as it goes on a TCP stream (length prefix and body)."""
        b = self._body
        return b"".join((b.head, _POS.pack(self.pos), b.tail))

    def frame(self) -> TPayload:
        return wp.make_frame("delivery", pos=self.pos, message=message_to_wire(self._body.message))


class Prebuilt:
    """An outbound frame whose body is built already, in the binary protocol
    (``timpy.wire.fast``); ``frame()`` builds the frame itself for a
    transport that speaks the JSON mapping."""

    __slots__ = ("data", "_make")

    def __init__(self, data: bytes, make: Callable[[], TPayload]) -> None:
        self.data = data
        self._make = make

    def wire(self) -> bytes:
        """The frame as it goes on a TCP stream (length prefix and body)."""
        return _LENGTH.pack(len(self.data)) + self.data

    def frame(self) -> TPayload:
        return self._make()


_BUILT = (Encoded, Prebuilt)


def encode_out(item: TPayload | Encoded | Prebuilt) -> bytes:
    """An outbound item's body in the binary protocol."""
    return item.data if type(item) in _BUILT else wp.encode(item)  # type: ignore[union-attr,arg-type]


def frame_out(item: TPayload | Encoded | Prebuilt) -> TPayload:
    return item.frame() if type(item) in _BUILT else item  # type: ignore[union-attr]


# A Delivery frame, in thrift's binary protocol, around the message's own
# encoding: rid (i64, field 1) = 0, delivery (struct, field 14) { pos (i64,
# field 1), message (struct, field 2) ... }. A message goes to several
# terminals (its sender's too) that differ only in ``pos``: it is encoded once.
_DELIVERY_HEAD = b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x0e\x0a\x00\x01"
_MESSAGE_FIELD = b"\x0c\x00\x02"
_POS = struct.Struct(">q")
_LENGTH = struct.Struct(">I")  # timpy.wire.framing's prefix
_last_body: _Body | None = None


def delivery_out(pos: int, message: ChatMessage) -> Encoded:
    global _last_body
    body = _last_body
    if body is None or body.message is not message:  # the writer pushes one message to all its terminals in a row
        body = _last_body = _Body(message)
    return Encoded(pos, body)


def error_frame(rid: int, exc: TimpyError) -> TPayload:
    return wp.make_frame("error", rid=rid, code=int(exc.code), text=exc.text)


class ConnectionWriter(Protocol):
    """The writing side of one client connection (``gateway/listeners.py``),
    which writes what the session queues on ``outbound``."""

    def wake(self) -> None:
        """Something was queued: write it (and what follows) soon."""

    def write_now(self, frame: TPayload | Encoded) -> bool:
        """Write ``frame`` at once in the caller's task; False when it must be
        queued instead (frames wait already, or the stream cannot)."""
        ...


class ClientSession:
    def __init__(self, node: NodeServices, peer: str, clock: Callable[[], float] = trio.current_time) -> None:
        self.node = node
        self.peer = peer
        limits = node.config.limits
        self._limits = limits
        self._clock = clock
        self._bucket = TokenBucket(limits.rate_per_connection, limits.burst_per_connection, clock())
        self._violations = 0
        # The outbound channel is made when the first frame is queued: the
        # login's replies and most deliveries are written at once
        # (``reply_now``, ``write_now``), so many connections never need one.
        self._outbound: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] | None = None
        self._finished = False
        self.greeted = False
        self.identity: Identity | None = None
        self.claims: TokenClaims | None = None
        self.terminal: LiveTerminal | None = None
        self._max_pushed = 0
        self._closing = False
        self.cancel_scope = trio.CancelScope()
        self._acks: trio.MemorySendChannel | None = None  # sends in flight, acknowledged in order
        self._writer: ConnectionWriter | None = None  # attach_writer; without one, frames wait on outbound

    def _channel(self) -> tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]:
        if self._outbound is None:
            self._outbound = trio.open_memory_channel[TPayload | Encoded | CloseAfter](self._limits.push_queue)
            if self._finished:
                self._outbound[0].close()
        return self._outbound

    @property
    def outbound_send(self) -> trio.MemorySendChannel:
        """Where frames for the connection's writer are queued."""
        return self._channel()[0]

    @property
    def outbound(self) -> trio.MemoryReceiveChannel:
        """What the connection's writer reads."""
        return self._channel()[1]

    def attach_writer(self, writer: ConnectionWriter) -> None:
        """The connection's writing side, given by its listener before the
        first frame is read: woken after each frame queued on ``outbound``,
        and offered each delivery to write at once."""
        self._writer = writer

    def queue(self, item: object) -> None:
        """Queue ``item`` on ``outbound`` for the connection's writer (raises
        as ``send_nowait``): a frame, or a marker of the listener's own."""
        self.outbound_send.send_nowait(item)  # type: ignore[arg-type]
        if self._writer is not None:
            self._writer.wake()

    def _wake_writer(self) -> None:
        if self._writer is not None:
            self._writer.wake()

    # --- TerminalLink ---------------------------------------------------

    # Pushes run in the writer's task (or another feature's), not this
    # connection's: a fault in building one frame must end this connection
    # only, never the task that serves every other client.

    def _push_failed(self, what: str) -> None:
        log.exception("internal error pushing %s to %s (%s)", what, self.peer,
                      self.identity.name if self.identity is not None else "not logged in")
        self.close("internal error", Code.INTERNAL)

    def push_nowait(self, delivery: Delivery) -> bool:
        try:
            frame = self._delivery_frame(delivery)
            writer = self._writer
            if writer is None or not writer.write_now(frame):
                self.queue(frame)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        except Exception:
            self._push_failed("a message")
            return False

    async def push(self, delivery: Delivery) -> None:
        try:
            frame = self._delivery_frame(delivery)
        except Exception:
            self._push_failed("a message")
            return
        try:
            await self.outbound_send.send(frame)
        except trio.ClosedResourceError:
            return
        self._wake_writer()

    def push_notice(self, notice: Notice) -> None:
        try:
            self.queue(notice_frame(notice))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # not stored, not retried: a slow terminal misses it
        except Exception:
            self._push_failed(type(notice).__name__)

    def _delivery_frame(self, delivery: Delivery) -> Encoded:
        if delivery.pos > self._max_pushed:
            self._max_pushed = delivery.pos
        return delivery_out(delivery.pos, delivery.message)

    def close(self, reason: str, code: Code | None = None) -> None:
        """Close after what is queued (with an error frame first when ``code``
        is given); at once if the queue is full."""
        if code is not None and not self._closing:
            try:
                self.queue(error_frame(0, TimpyError(reason, code)))
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass
        if self._closing:
            return
        self._closing = True
        log.info("closing client %s: %s", self.peer, reason)
        try:
            self.queue(CloseAfter(reason))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.cancel_scope.cancel()

    def fail(self, exc: TimpyError, rid: int = 0) -> None:
        """Send an error, then close: for a stream that cannot be trusted any more."""
        try:
            self.queue(error_frame(rid, exc))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass
        self.close(exc.text)

    async def reply(self, frame: TPayload) -> None:
        try:
            self.queue(frame)  # no task switch while there is room
        except trio.WouldBlock:
            try:
                await self.outbound_send.send(frame)
            except trio.ClosedResourceError:
                return
            self._wake_writer()
        except trio.ClosedResourceError:
            pass

    async def reply_now(self, frame: TPayload | Prebuilt) -> None:
        """``reply``, taken at once in this task while nothing waits to be
        written (the connection's writer holds it until the scheduling round
        ends, then writes what the round gave it in one call): no writer task
        to start for a reply, nor a channel hop. The replies that come once
        per connection (welcome, login, its sync done) and the
        acknowledgements, which come in bursts, go this way."""
        writer = self._writer
        if writer is None or self._closing or not writer.write_now(frame):
            await self.reply(frame)

    # --- lifecycle ------------------------------------------------------

    def finish(self) -> None:
        """The connection is gone: leave the registry."""
        if self.terminal is not None:
            self.node.rooms.terminal_closed(self.terminal)
            self.node.deliverer.close_terminal(self.terminal)
            self.terminal = None
        if self._acks is not None:
            self._acks.close()
        self._finished = True
        if self._outbound is not None:
            self._outbound[0].close()

    # --- frames ---------------------------------------------------------

    async def handle_bad_frame(self, exc: ProtocolError, rid: int = 0) -> None:
        """A frame that did not decode: its boundary was sound, so answer and go
        on (under its request id when the transport could read it)."""
        await self.reply(error_frame(rid, exc))
        self._count_violation()

    def _count_violation(self) -> None:
        self._violations += 1
        if self._violations > self._limits.rate_violations_before_close:
            self.fail(ProtocolError("too many bad or excess frames", Code.RATE_LIMITED))

    async def handle(self, frame: TPayload) -> None:
        if self._closing:
            return  # the connection is being closed: nothing more is served
        rid = frame.rid or 0
        # File chunks are not counted as frames: a connection's chunks are
        # served one at a time, each stored before the next is read, so they
        # cannot flood, and a 100 MiB file is 800 of them.
        bulk = frame.upload_chunk is not None or frame.chunk_request is not None
        if not bulk and not self._bucket.take(self._clock()):
            await self.reply(
                error_frame(rid, ProtocolError("too many frames; slow down", Code.RATE_LIMITED))
            )
            self._count_violation()
            return
        op = "an undecodable request"
        try:
            op, body = wp.operation_of(frame)
            handler = _HANDLERS.get(op)
            if handler is None:
                raise ProtocolError(f"{op!r} is not an operation a client sends", Code.UNKNOWN_OPERATION)
            if not self.greeted and op != "hello":
                self.fail(ProtocolError("the first frame must be hello", Code.HANDSHAKE_REQUIRED), rid)
                return
            if self.identity is None and op not in _NO_AUTH_OPS:
                raise ProtocolError("log in first", Code.AUTH_REQUIRED)
            await getattr(self, handler)(rid, body)
        except TimpyError as exc:
            if isinstance(exc, ProtocolError):
                self._count_violation()
            self.node.metrics.errors.labels(exc.code.name).inc()
            if isinstance(exc, AuthError):
                self.node.metrics.login_failures.inc()
            await self.reply(error_frame(rid, in_users_words(exc, frame)))
        except Exception:
            self.node.metrics.errors.labels(Code.INTERNAL.name).inc()
            log.exception("internal error serving %s (%s) for %s", self.peer,
                          self.identity.name if self.identity is not None else "not logged in", op)
            await self.reply(error_frame(rid, TimpyError("internal error; it was logged", Code.INTERNAL)))

    # --- operations -----------------------------------------------------

    async def _op_hello(self, rid: int, body: TPayload) -> None:
        if self.greeted:
            raise ProtocolError("hello was sent already", Code.BAD_REQUEST)
        if body.version != wp.PROTOCOL_VERSION:
            self.fail(
                ProtocolError(
                    f"protocol version {body.version} is not supported; this node speaks {wp.PROTOCOL_VERSION}",
                    Code.VERSION_UNSUPPORTED,
                ),
                rid,
            )
            return
        self.greeted = True
        await self.reply_now(
            wp.make_frame(
                "welcome",
                rid=rid,
                version=wp.PROTOCOL_VERSION,
                node_id=self.node.node_id,
                max_frame=self._limits.max_frame,
                max_body=self._limits.max_body,
            )
        )

    async def _op_ping(self, rid: int, body: TPayload) -> None:
        await self.reply(wp.make_frame("pong", rid=rid, nonce=body.nonce or 0))

    async def _op_register(self, rid: int, body: TPayload) -> None:
        await self.node.accounts.register(body.name or "", body.password or "")
        await self.reply(wp.make_frame("ok", rid=rid))

    def _check_not_logged_in(self) -> None:
        if self.identity is not None:
            raise RequestError("this connection is logged in already; log out first", Code.ALREADY_LOGGED_IN)

    @staticmethod
    def _device(device: str | None) -> str:
        device = device or f"anon-{uuid.uuid4().hex[:12]}"
        if len(device) > ids.MAX_DEVICE:
            raise RequestError(f"a device name has at most {ids.MAX_DEVICE} characters", Code.BAD_REQUEST)
        return device

    async def _op_login(self, rid: int, body: TPayload) -> None:
        self._check_not_logged_in()
        device = self._device(body.device)
        who = await self.node.accounts.login_password(body.name or "", body.password or "")
        token, claims = self.node.accounts.issue_token(who, device)
        await self._attach(rid, who, claims, token, no_sync=bool(body.no_sync), kind=self._kind(body.device_kind))
        self.node.metrics.logins.labels("password").inc()

    async def _op_token_login(self, rid: int, body: TPayload) -> None:
        self._check_not_logged_in()
        who, claims = self.node.accounts.login_token(body.token or "")
        await self.node.accounts.require_enabled(who)
        if body.device and body.device != claims.device:
            raise RequestError(
                "this token was issued to another device; log in with a password on this one", Code.BAD_REQUEST
            )
        await self._attach(
            rid, who, claims, body.token, no_sync=bool(body.no_sync), kind=self._kind(body.device_kind)
        )
        self.node.metrics.logins.labels("token").inc()

    @staticmethod
    def _kind(kind: str | None) -> str:
        kind = kind or "other"
        if not _DEVICE_KIND.match(kind):
            raise RequestError("a device kind has 1 to 16 of a-z, 0-9, '_', '-' (e.g. mobile)", Code.BAD_REQUEST)
        return kind

    async def _attach(
        self, rid: int, who: Identity, claims: TokenClaims, token: str, no_sync: bool, kind: str = "other"
    ) -> None:
        device = claims.device
        terminal = LiveTerminal(
            who.user_id, ids.device_index(self.node.indexer, who.user_id, device), device, self, kind=kind,
            on_gap=self.node.deliverer.resync,
        )
        cursor = await self.node.deliverer.open_terminal(terminal)
        self.identity, self.claims, self.terminal = who, claims, terminal
        if not no_sync:
            terminal.begin_sync()  # hold live pushes until the sync has sent what came before
        old = self.node.terminals.attach(terminal)
        if old is not None:
            old.link.close("logged in again from the same device elsewhere", Code.KICKED)
        log.info("user logged in from %s", self.peer)
        await self.reply_now(
            wp.make_frame("login_ok", rid=rid, user=who.name, token=token, expires_at=claims.expires_ms, device=device)
        )
        if not no_sync:
            await self._sync(rid, cursor)

    async def _sync(self, rid: int, cursor: int) -> None:
        assert self.terminal is not None
        last, count = await self.node.deliverer.sync(self.terminal, cursor)
        await self.reply_now(wp.make_frame("sync_done", rid=rid, pos=last, count=count))

    async def _op_sync(self, rid: int, body: TPayload) -> None:
        assert self.terminal is not None
        cursor = await self.node.deliverer.open_terminal(self.terminal)
        await self._sync(rid, cursor)

    async def _op_logout(self, rid: int, body: TPayload) -> None:
        assert self.claims is not None
        await self.node.accounts.logout(self.claims)
        if self.terminal is not None:
            self.node.rooms.terminal_closed(self.terminal)
            self.node.deliverer.close_terminal(self.terminal)
        self.identity = self.claims = self.terminal = None
        await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_group_request(self, rid: int, body: TPayload) -> None:
        assert self.identity is not None
        info = await self.node.groups.request(
            self.identity, body.group or "", body.op or "", list(body.users or []), body.name or "",
            body.policy or "", bool(body.flag), dict(body.profile or {}),
        )
        await self.reply(wp.make_frame("group_info", rid=rid, **info))

    async def _op_send(self, rid: int, body: TPayload) -> None:
        m = body.message
        if m is None:
            raise RequestError("send carries no message", Code.INVALID_MESSAGE)
        assert self.identity is not None
        self.node.messenger.check_user_rate(self.identity.user_id, self._clock())
        started = time.perf_counter()
        if (m.ext or {}).get("thread"):  # to the thread under a message
            result = await self.node.threads.send(
                self.identity, m.recipient or "", m.conversation or "", m.client_id or "", m.kind or 0,
                m.body or b"", m.ext or {},
            )
            await self._ack(rid, started, result)
            return
        if m.conversation and not m.recipient:  # to a group
            result = await self.node.groups.send(
                self.identity, m.conversation, m.client_id or "", m.kind or 0, m.body or b"", m.ext or {}
            )
            await self._ack(rid, started, result)
            return
        ticket = await self.node.messenger.start_send(
            self.identity,
            m.recipient or "",
            m.client_id or "",
            m.kind or 0,
            m.body or b"",
            m.ext or {},
        )
        # Queued for the writer now: the next frame is read while this one is
        # stored, and its ack follows when it is (acks in request order).
        if self._acks is None:
            send, receive = trio.open_memory_channel[tuple[int, float, SendTicket]](self._limits.push_queue)
            if not self.node.tasks.spawn(self._ack_in_order, receive):
                await self._ack(rid, started, await ticket.wait())  # the node is stopping: ack here, in turn
                return
            self._acks = send
        try:
            self._acks.send_nowait((rid, started, ticket))
        except trio.WouldBlock:
            await self._acks.send((rid, started, ticket))  # too many in flight: stop reading until some are done
        except trio.ClosedResourceError:
            pass  # the connection is gone; the writer still stores the message

    async def _ack_in_order(self, receive: trio.MemoryReceiveChannel) -> None:
        """Acknowledge this connection's sends in request order. It wakes once
        per writer batch, not per message: what the writer has settled is
        answered without waiting."""
        async with receive:
            while True:
                try:
                    rid, started, ticket = receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        rid, started, ticket = await receive.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                try:
                    result = ticket.now() or await ticket.wait()
                except TimpyError as exc:
                    self.node.metrics.errors.labels(exc.code.name).inc()
                    await self.reply(error_frame(rid, exc))
                    continue
                except Exception:
                    self.node.metrics.errors.labels(Code.INTERNAL.name).inc()
                    log.exception("internal error serving %s", self.peer)
                    await self.reply(error_frame(rid, TimpyError("internal error; it was logged", Code.INTERNAL)))
                    continue
                await self._ack(rid, started, result)

    async def _ack(self, rid: int, started: float, result: SendResult) -> None:
        self.node.metrics.messages_in.inc()
        self.node.metrics.delivery_latency.observe(time.perf_counter() - started)
        await self.reply_now(Prebuilt(ack_bytes(rid, result), functools.partial(ack_frame, rid, result)))

    async def _op_history(self, rid: int, body: TPayload) -> None:
        assert self.identity is not None
        conv, messages, more = await self.node.messenger.history(
            self.identity,
            body.conversation or "",
            body.peer or "",
            body.before_seq or 0,
            body.after_seq,
            body.limit or 0,
        )
        await self.reply(
            wp.make_frame(
                "history_page", rid=rid, conversation=conv, messages=[message_to_wire(m) for m in messages], more=more
            )
        )

    async def _op_delivery_ack(self, rid: int, body: TPayload) -> None:
        assert self.terminal is not None
        # A terminal cannot acknowledge what it was never sent.
        pos = min(body.pos or 0, self._max_pushed)
        if pos > 0:
            self.node.deliverer.acknowledge(self.terminal, pos)

    # --- roster, presence, signals, receipts, rooms, profiles ----------------------

    def _who(self) -> tuple[Identity, LiveTerminal]:
        assert self.identity is not None and self.terminal is not None
        return self.identity, self.terminal

    async def _op_roster_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        view = await self.node.roster.request(who, body.op or "", body.user or "")
        await self.reply(wp.make_frame("roster", rid=rid, **view))

    async def _op_presence_set(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        await self.node.presence.set(who, body.status or "", body.text or "", bool(body.invisible))
        await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_presence_query(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        found = await self.node.presence.query(
            who, list(body.users or []), bool(body.subscribe), bool(body.unsubscribe)
        )
        await self.reply(notice_frame(PresenceList([Presence(**u) for u in found]), rid))

    async def _op_signal(self, rid: int, body: TPayload) -> None:
        who, terminal = self._who()
        await self.node.signalling.send(
            who, terminal.device_id, body.to or "", body.conversation or "", body.kind or "", body.data or b""
        )
        if rid:
            await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_receipt(self, rid: int, body: TPayload) -> None:
        who, terminal = self._who()
        await self.node.receipts.receipt(who, terminal.device_id, body.conversation or "", body.seq or 0, bool(body.read))
        if rid:
            await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_unread_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        counts, marks = await self.node.receipts.unread(who)
        await self.reply(wp.make_frame("unread", rid=rid, counts=counts, read=marks))

    async def _op_room_request(self, rid: int, body: TPayload) -> None:
        who, terminal = self._who()
        info = await self.node.rooms.request(who, terminal, body.room or "", body.op or "")
        await self.reply(wp.make_frame("room_info", rid=rid, **info))

    async def _op_stream(self, rid: int, body: TPayload) -> None:
        who, terminal = self._who()
        await self.node.rooms.stream(who, terminal, body.room or "", body.data or b"")
        if rid:
            await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_pusher_request(self, rid: int, body: TPayload) -> None:
        who, terminal = self._who()
        pushers = await self.node.push.request(who, terminal.device_id, body.op or "", body.app_id or "",
                                               body.pushkey or "", body.url or "", dict(body.data or {}))
        await self.reply(wp.make_frame("pusher_list", rid=rid, pushers=[wp.thrift.PusherInfo(**p) for p in pushers]))

    async def _op_profile_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        if body.changes:
            if body.user and ids.normalize_name(body.user) != who.name:
                raise RequestError("you can change your own profile only", Code.NOT_ALLOWED)
            view = await self.node.accounts.set_profile(who, dict(body.changes))
        else:
            view = await self.node.accounts.profile(body.user or who.name)
        await self.reply(wp.make_frame("profile", rid=rid, **view))

    # --- files ---------------------------------------------------------------------------

    async def _op_upload_start(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        state = await self.node.attachments.start_upload(
            who, body.name or "", body.size or 0, body.mime or "", body.sha256 or "", body.upload_id or ""
        )
        await self.reply(wp.make_frame(
            "upload_state", rid=rid, upload_id=state.upload_id, chunk_size=state.chunk_size, chunks=state.chunks,
            have=state.have, complete=state.complete,
        ))

    async def _op_upload_chunk(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        await self.node.attachments.put_chunk(who, body.upload_id or "", body.index or 0, body.data or b"")
        await self.reply(wp.make_frame("ok", rid=rid))

    async def _op_upload_finish(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        info = await self.node.attachments.finish_upload(who, body.upload_id or "")
        await self.reply(_attachment_frame(rid, info))

    async def _op_attachment_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        op = body.op or "info"
        if op == "url":
            info, url, expires = await self.node.attachments.url(who, body.id or "")
            await self.reply(_attachment_frame(rid, info, url, expires))
        elif op == "info":
            await self.reply(_attachment_frame(rid, await self.node.attachments.info(who, body.id or "")))
        else:
            raise RequestError(f'unknown attachment operation {op!r} (use "info" or "url")', Code.BAD_REQUEST)

    async def _op_chunk_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        data = await self.node.attachments.chunk(who, body.id or "", body.index or 0)
        await self.reply(wp.make_frame("chunk", rid=rid, id=body.id or "", index=body.index or 0, data=data))

    # --- conversation list and search ------------------------------------------------

    async def _op_conversation_list(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        offset = body.offset or 0
        entries, total = await self.node.conversations.list(who, offset, body.limit or 0, bool(body.archived))
        await self.reply(wp.make_frame(
            "conversation_page", rid=rid, entries=[entry_to_wire(e) for e in entries], total=total,
            more=offset + len(entries) < total,
        ))

    async def _op_conversation_set(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        entry = await self.node.conversations.set_flags(
            who, body.conversation or "", body.muted, body.pinned, body.archived
        )
        await self.reply(wp.make_frame("conversation_entry", entry_to_wire(entry), rid=rid))

    async def _op_search(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        offset = body.offset or 0
        hits, count = await self.node.search.search(
            who, body.query or "", body.conversation or "", offset, body.limit or 0
        )
        await self.reply(wp.make_frame(
            "search_results", rid=rid, count=count, more=offset + len(hits) < count,
            hits=[wp.thrift.SearchHit(conversation=c, seq=q, server_time=ms) for c, q, ms in hits],
        ))

    async def _op_thread_request(self, rid: int, body: TPayload) -> None:
        who, _ = self._who()
        found = await self.node.threads.summaries(who, body.peer or "", body.conversation or "", list(body.roots or []))
        await self.reply(wp.make_frame(
            "thread_list", rid=rid, threads=[wp.thrift.ThreadInfo(root=r, thread=t, count=n) for r, t, n in found]
        ))


def _attachment_frame(rid: int, info: AttachmentInfo, url: str = "", expires: int = 0) -> TPayload:
    return wp.make_frame(
        "attachment", rid=rid, id=info.id, name=info.name, size=info.size, mime=info.mime, sha256=info.sha256,
        chunk_size=info.chunk_size, chunks=info.chunks, url=url, url_expires=expires,
    )
