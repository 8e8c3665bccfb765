"""Client transports: length-prefixed thrift over TCP, and WebSocket
(binary messages: thrift; text messages: the JSON mapping), each optionally
in TLS (``tls_cert``/``tls_key``: clients use ``tcps://`` and ``wss://``).

Every connection runs in its own tasks; a fault in them ends that connection
alone, logged with the peer and user, never the listener or the node."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio
from thriftpy2.thrift import TPayload
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from timpy.errors import Code, ProtocolError, TimpyError
from timpy.gateway.session import (
    ClientSession,
    CloseAfter,
    Encoded,
    Prebuilt,
    encode_out,
    error_frame,
    frame_out,
)
from timpy.gateway.tls import server_context
from timpy.wire import jsonmap
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

if TYPE_CHECKING:
    from timpy.gateway.services import NodeServices

log = logging.getLogger("timpy.gateway")
T = TypeVar("T")
_WRITE_BATCH = 128


class ConnectionGate:
    """Counts open client connections against the configured limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def admit(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


CLOSE_GRACE = 5.0  # seconds the writer gets to flush a final error to a peer


async def _let_writer_close() -> None:
    """After ``fail``: the writer sends the error and ends the connection;
    wait for that, but not forever on a peer that does not read."""
    await trio.sleep(CLOSE_GRACE)


_PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class _ends_connection:  # noqa: N801 - used as a context manager, like the function it was
    """A peer that went away ends its connection's tasks, and nothing else.

    (A class, not a generator: every idle connection holds two of these.)"""

    __slots__ = ("_nursery",)

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, _PEER_GONE):
            self._nursery.cancel_scope.cancel()
            return exc is not None
        return False


def describe(session: ClientSession) -> str:
    """The connection, for logs: peer address, and the user once logged in."""
    user = session.identity.name if session.identity is not None else "not logged in"
    return f"{session.peer} ({user})"


_INTERNAL = TimpyError("internal error on the node; it was logged. Reconnect and try again", Code.INTERNAL)


class _one_connection:  # noqa: N801 - used as a context manager, like the function it was
    """A fault in one connection's tasks ends that connection alone, logged
    with the peer and the user; the listener and the node go on."""

    __slots__ = ("_node", "_describe")

    def __init__(self, node: NodeServices, describe_it: Callable[[], str]) -> None:
        self._node = node
        self._describe = describe_it

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        if not isinstance(exc, BaseExceptionGroup):
            if isinstance(exc, _PEER_GONE):
                return True  # the peer went away: nothing to say
            if not isinstance(exc, Exception):
                return False  # cancellation and the like go on up
            exc = BaseExceptionGroup("", [exc])
        _, rest = exc.split(_PEER_GONE)
        if rest is None:
            return True
        faults, others = rest.split(Exception)
        if faults is not None:
            self._node.metrics.errors.labels(Code.INTERNAL.name).inc()
            for fault in faults.exceptions:
                log.error("client connection %s failed: %s", self._describe(), type(fault).__name__, exc_info=fault)
        if others is not None:
            raise others  # cancellation and the like go on up
        return True


async def _serve_frame(session: ClientSession, frame: TPayload) -> None:
    """One request: a fault that escapes its handler is answered INTERNAL
    under the request's id, and the connection is closed."""
    try:
        await session.handle(frame)
    except Exception:
        log.exception("serving a request from %s failed", describe(session))
        rid = frame.rid if isinstance(frame.rid, int) else 0
        session.fail(_INTERNAL, rid)


def _decode_or_none(decode: object, data: object) -> TPayload:
    """Decode a frame; a decoder fault other than a clean refusal is a bad
    frame to this client, not a crash of the connection."""
    try:
        return decode(data)  # type: ignore[operator]
    except ProtocolError:
        raise
    except Exception as exc:
        log.warning("a frame did not decode (%s): %s", type(exc).__name__, exc)
        raise ProtocolError("the frame could not be decoded", Code.BAD_FRAME) from None


def json_rid(text: str) -> int:
    """The request id of a JSON frame that failed to decode, when it can be
    read, so the client waiting on that id gets the error; else 0."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return 0
    rid = data.get("rid") if isinstance(data, dict) else None
    if isinstance(rid, int) and not isinstance(rid, bool) and -(2**31) <= rid < 2**31:
        return rid
    return 0


async def _close_with_error(send: object) -> None:
    """After a fault: tell the client, briefly and best effort, then close."""
    with trio.move_on_after(CLOSE_GRACE):
        try:
            await send()  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - the connection is being abandoned anyway
            pass


_FULL = ProtocolError("the node has too many connections; try another node or later", Code.TOO_MANY_CONNECTIONS)


def client_tls(node: NodeServices) -> ssl.SSLContext | None:
    """The TLS context of the client listeners, or None without TLS."""
    c = node.config
    if c.tls_cert is None or c.tls_key is None:
        return None
    return server_context(c.tls_cert, c.tls_key)


def _peer_of(stream: trio.abc.Stream) -> str:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
        return f"{host}:{port}"
    except (OSError, AttributeError):
        return "?"


async def serve_tcp_stream(node: NodeServices, stream: trio.abc.Stream) -> None:
    """Serve one client over a byte stream in the TCP framing: a socket, a TLS
    stream over one, or an in-memory stream (``timpy.testing``)."""
    peer = _peer_of(stream)
    if not node.gate.admit():
        with trio.move_on_after(CLOSE_GRACE):
            try:
                await stream.send_all(frame_bytes(wp.encode(error_frame(0, _FULL))))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    session: ClientSession | None = None
    with _one_connection(node, lambda: describe(session) if session else peer):
        try:
            session = ClientSession(node, peer)
            # Read in this task; write in another only while there is
            # something queued (an idle connection is one task: its memory is
            # mostly its tasks' frames), the handshake timeout a deadline on
            # the reads, not a task of its own.
            deadline = trio.current_time() + node.config.limits.handshake_timeout
            try:
                with session.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        session.attach_writer(_TcpWriter(stream, session, nursery))
                        with _ends_connection(nursery):
                            await _read_tcp_frames(node, stream, session, deadline)
            finally:
                session.finish()
        except Exception:
            await _close_with_error(lambda: stream.send_all(frame_bytes(wp.encode(error_frame(0, _INTERNAL)))))
            raise
        finally:
            node.gate.leave()
            with trio.CancelScope(shield=True):
                await stream.aclose()


class _Bytes:
    """Outbound marker: bytes ready for the stream: the rest of a frame a
    direct write began, a WebSocket pong or close frame; ``last``: the
    connection ends once they are written."""

    __slots__ = ("data", "last")

    def __init__(self, data: bytes, last: bool = False) -> None:
        self.data = data
        self.last = last


class _Corked:
    """The plain-socket writers holding frames written "at once" during the
    current scheduling round, written out together when it ends: a writer
    batch's pushes and echoes to one connection leave in one system call
    instead of one each (under a flood that was a call per message per
    connection). One per trio run; its flush is a system task spawned when
    the first frame of a round is held, so it runs after the tasks of the
    round that held them, and never waits."""

    __slots__ = ("writers", "scheduled")

    def __init__(self) -> None:
        self.writers: list[_Writer] = []
        self.scheduled = False

    def hold(self, writer: _Writer) -> None:
        self.writers.append(writer)
        if not self.scheduled:
            self.scheduled = True
            trio.lowlevel.spawn_system_task(self._flush, name="timpy.gateway.flush")

    async def _flush(self) -> None:
        writers, self.writers = self.writers, []
        self.scheduled = False
        for writer in writers:
            try:
                writer.flush_held()
            except Exception:  # a system task must not raise: that connection ends, not the node
                log.exception("writing to a client failed")
                writer.give_up()


_CORKED: trio.lowlevel.RunVar[_Corked] = trio.lowlevel.RunVar("timpy_corked")


def _corked() -> _Corked:
    try:
        return _CORKED.get()
    except LookupError:
        corked = _Corked()
        _CORKED.set(corked)
        return corked


class _Writer:
    """A client connection's writing side, one per connection; ``_TcpWriter``
    and ``_WsWriter`` say how a frame becomes bytes. Its task runs only while
    frames wait in ``session.outbound`` (``wake`` starts it; it ends once they
    are all written, up to ``_WRITE_BATCH`` frames a ``send_all``): an idle
    connection is one task, not two.

    ``write_now`` takes a frame for the socket in the caller's task, when no
    writer task is running (nothing queued): a group message to 10,000
    members was 10,000 channel hops and task switches, each waking a writer
    for one frame. The frame's bytes are held until the current scheduling
    round ends (``_Corked``) and then written straight to the socket, with
    whatever else the round held for that connection; a member's socket
    almost always has room, so they go out at once. When the writer is
    running, or the stream is not a plain socket (TLS, the in-memory streams
    of ``timpy.testing``), the frame is queued; bytes the socket did not take
    (all of them when it is full) are queued for the writer, ahead of
    anything queued after them, and a writer task that starts while bytes
    are held writes those first."""

    __slots__ = ("_stream", "_session", "_nursery", "_socket", "running", "_held")

    def __init__(self, stream: trio.abc.Stream, session: ClientSession, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._session = session
        self._nursery = nursery
        self._socket = stream.socket if type(stream) is trio.SocketStream else None
        self.running = False
        self._held: list[bytes] = []

    def _encode(self, item: object) -> bytes | None:
        """A queued frame as the stream's bytes; None: not sent (closing)."""
        raise NotImplementedError

    def _goodbye(self, item: CloseAfter) -> bytes:
        """The bytes that end the connection after what was queued, if any."""
        return b""

    def wake(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            self._nursery.start_soon(self._write)
        except RuntimeError:  # the connection is ending: nothing more is written
            pass

    def write_now(self, item: object) -> bool:
        sock = self._socket
        if sock is None or self.running:
            return False  # not a plain socket, or frames are queued: keep the order
        data = self._encode(item)
        if data is None:
            return True  # closing: dropped, as the writer would
        held = self._held
        held.append(data)
        if len(held) == 1:
            _corked().hold(self)
        return True

    def flush_held(self) -> None:
        """Write the frames held this round (``_Corked``); what the socket does not take goes to the writer."""
        held = self._held
        if not held:
            return  # a writer task took them first
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        sock = self._socket
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return  # the connection is gone
        try:
            sent = os.write(fd, data)
        except OSError:
            sent = 0  # full (BlockingIOError) or broken: the writer meets it
        if sent < len(data):
            try:
                self._session.queue(_Bytes(data[sent:] if sent else data))
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.give_up()

    def give_up(self) -> None:
        self._session.close("too slow to receive messages; reconnect to sync", Code.TOO_SLOW)

    async def _write(self) -> None:
        outbound = self._session.outbound
        encode = self._encode
        ending = False
        try:
            while not ending:
                chunks: list[bytes] = []
                if self._held:  # held this round, before anything queued after them
                    chunks.extend(self._held)
                    self._held.clear()
                while len(chunks) < _WRITE_BATCH:
                    try:
                        item = outbound.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        ending = True
                        break
                    kind = type(item)
                    if kind is _Bytes:
                        chunks.append(item.data)  # type: ignore[union-attr]
                        if item.last:  # type: ignore[union-attr]
                            ending = True
                            break
                        continue
                    if kind is CloseAfter:
                        goodbye = self._goodbye(item)  # type: ignore[arg-type]
                        if goodbye:
                            chunks.append(goodbye)
                        ending = True
                        break
                    data = encode(item)
                    item = None  # type: ignore[assignment]
                    if data is not None:
                        chunks.append(data)
                if not chunks and not ending:
                    self.running = False  # all written: the task ends until the next frame
                    return
                data = b"".join(chunks)
                chunks = None  # type: ignore[assignment]  # nothing sent is kept
                if data:
                    await self._stream.send_all(data)
                data = None
        except _PEER_GONE:
            pass
        self._nursery.cancel_scope.cancel()  # closed by the session or the client, or the peer went away


class _TcpWriter(_Writer):
    """Frames in the TCP framing (length-prefixed thrift)."""

    __slots__ = ()

    def _encode(self, item: object) -> bytes:
        if type(item) is Encoded or type(item) is Prebuilt:
            return item.wire()  # type: ignore[union-attr]
        return frame_bytes(encode_out(item))  # type: ignore[arg-type]


_NO_LOGIN = ProtocolError("no login within the handshake timeout", Code.AUTH_REQUIRED)


async def _until_logged_in(receive: Callable[[], Awaitable[T]], session: ClientSession, deadline: float) -> T | None:
    """``receive()``; None once the handshake time is over without a login
    (the client is told, and the connection closes)."""
    if session.identity is None:
        if trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                return await receive()
        if session.identity is None:
            session.fail(_NO_LOGIN)
            await _let_writer_close()
            return None
    return await receive()


async def _read_tcp_frames(node: NodeServices, stream: trio.abc.Stream, session: ClientSession, deadline: float) -> None:
    decoder = FrameDecoder(node.config.limits.max_frame)
    while True:
        if session.identity is not None:
            data = await stream.receive_some(65536)
        else:
            data = await _until_logged_in(functools.partial(stream.receive_some, 65536), session, deadline)
        if not data:
            return  # the peer closed, or no login in time
        try:
            bodies = decoder.feed(data)
        except ProtocolError as exc:
            session.fail(exc)  # the stream is out of step now
            await _let_writer_close()
            return
        data = None
        for body in bodies:
            try:
                frame = _decode_or_none(wp.decode, body)
            except ProtocolError as exc:
                await session.handle_bad_frame(exc)
                continue
            await _serve_frame(session, frame)
        # An idle connection keeps nothing of its last request.
        bodies = body = frame = None  # type: ignore[assignment]


async def run_tcp_listener(node: NodeServices, host: str, port: int, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
    tls = client_tls(node)

    handler = functools.partial(serve_tcp_stream, node)  # no wrapper coroutine kept per connection

    if tls is None:
        await trio.serve_tcp(handler, port, host=host, task_status=task_status)
        return
    listeners = await trio.open_tcp_listeners(port, host=host)
    tls_listeners = [trio.SSLListener(listener, tls, https_compatible=False) for listener in listeners]
    task_status.started(listeners)
    await trio.serve_listeners(handler, tls_listeners)


def _encode_ws(frame: TPayload | Encoded, json_mode: bool) -> bytes | str:
    return jsonmap.encode_json(frame_out(frame)) if json_mode else encode_out(frame)


# --- WebSocket: wsproto over the connection's stream ---------------------------------
#
# Served straight on wsproto, as the TCP framing is: one task per idle
# connection (trio-websocket kept three: its connection handler, its reader
# and ours, with two memory channels and several events, about 14 KiB of an
# idle connection's 32), the handshake's HTTP state dropped once it is done.

_WS_CLOSE_TOO_MANY = 1013
_WS_CLOSE_POLICY = 1008
_WS_CLOSE_TOO_BIG = 1009


class WebSocketServer:
    """What ``run_ws_listener`` reports when it listens: its listeners, and
    the port of the first."""

    def __init__(self, listeners: list[trio.SocketListener]) -> None:
        self.listeners = listeners

    @property
    def port(self) -> int:
        return int(self.listeners[0].socket.getsockname()[1])


async def _ws_handshake(stream: trio.abc.Stream, timeout: float) -> Connection | None:
    """The server side of the opening handshake; the WebSocket connection, or
    None when the client went away, took too long, or did not ask for a
    WebSocket (it is answered 400)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            try:
                handshake.receive_data(data)
                for event in handshake.events():
                    if isinstance(event, Request):
                        await stream.send_all(handshake.send(AcceptConnection()))
                        return handshake.connection
            except RemoteProtocolError as exc:
                if exc.event_hint is not None:
                    with contextlib.suppress(Exception):
                        await stream.send_all(handshake.send(exc.event_hint))
                return None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
    return None


class _WsStream:
    """One WebSocket connection's reading side and its wsproto state."""

    __slots__ = ("stream", "conn", "session", "max_message", "_parts", "_size")

    def __init__(self, stream: trio.abc.Stream, conn: Connection, session: ClientSession, max_message: int) -> None:
        self.stream = stream
        self.conn = conn
        self.session = session
        self.max_message = max_message
        self._parts: list[bytes | str] | None = None
        self._size = 0

    def _control(self, data: bytes, last: bool = False) -> bool:
        """Hand WebSocket bytes to the writer, in order with the frames queued."""
        try:
            self.session.queue(_Bytes(data, last))
        except (trio.WouldBlock, trio.ClosedResourceError):
            if last:
                self.session.cancel_scope.cancel()  # no room to say goodbye: close now
            return False
        return True

    async def _close(self, code: int, reason: str) -> None:
        """Send a close frame (after what is queued) and end the connection."""
        if self.conn.state is ConnectionState.OPEN:
            self._control(self.conn.send(CloseConnection(code=code, reason=reason)), last=True)
            await _let_writer_close()

    async def get_message(self) -> bytes | str | None:
        """The next whole message; None once the connection is over."""
        conn = self.conn
        while True:
            for event in conn.events():
                kind = type(event)
                if kind is BytesMessage or kind is TextMessage:
                    self._size += len(event.data)
                    if self._size > self.max_message:
                        await self._close(_WS_CLOSE_TOO_BIG, f"Exceeded maximum message size: {self.max_message} bytes")
                        return None
                    if event.message_finished and self._parts is None:
                        self._size = 0
                        return event.data  # one frame: the common case
                    if self._parts is None:
                        self._parts = []
                    self._parts.append(event.data)
                    if event.message_finished:
                        parts, self._parts, self._size = self._parts, None, 0
                        return b"".join(parts) if kind is BytesMessage else "".join(parts)  # type: ignore[arg-type]
                elif kind is Ping:
                    self._control(conn.send(event.response()))
                elif kind is CloseConnection:
                    if conn.state is ConnectionState.REMOTE_CLOSING:  # the client closes: answer it
                        self._control(conn.send(event.response()), last=True)
                        await _let_writer_close()
                    else:  # a frame wsproto refused (ParseFailed): say why, and close
                        await self._close(event.code, event.reason or "")
                    return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None  # the peer went away without a close frame
            if conn.state is ConnectionState.CLOSED:
                return None
            conn.receive_data(data)


async def serve_ws_stream(node: NodeServices, stream: trio.abc.Stream) -> None:
    """Serve one client over WebSocket on a byte stream (a socket, or TLS over one)."""
    peer = _peer_of(stream)
    try:
        conn = await _ws_handshake(stream, node.config.limits.handshake_timeout)
        if conn is None:
            return
        if not node.gate.admit():
            with trio.move_on_after(CLOSE_GRACE), contextlib.suppress(*_PEER_GONE):
                await stream.send_all(conn.send(BytesMessage(wp.encode(error_frame(0, _FULL))))
                                      + conn.send(CloseConnection(_WS_CLOSE_TOO_MANY, "too many connections")))
            return
        session: ClientSession | None = None
        try:
            with _one_connection(node, lambda: describe(session) if session else peer):
                try:
                    session = ClientSession(node, peer)
                    await _serve_ws_session(_WsStream(stream, conn, session, node.config.limits.max_frame), session)
                except Exception:
                    if conn.state is ConnectionState.OPEN:
                        await _close_with_error(lambda: stream.send_all(
                            conn.send(BytesMessage(wp.encode(error_frame(0, _INTERNAL))))))
                    raise
        finally:
            node.gate.leave()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _serve_ws_session(ws: _WsStream, session: ClientSession) -> None:
    """As a TCP connection (``serve_tcp_stream``): read in this task, write in
    another only while something is queued."""
    json_mode = [False]  # the last message's kind: the replies follow it
    deadline = trio.current_time() + session.node.config.limits.handshake_timeout
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:
                session.attach_writer(_WsWriter(ws, json_mode, nursery))
                with _ends_connection(nursery):
                    await _read_ws_messages(ws, session, json_mode, deadline)
    finally:
        session.finish()


async def _read_ws_messages(ws: _WsStream, session: ClientSession, json_mode: list[bool], deadline: float) -> None:
    while True:
        if session.identity is not None:
            message = await ws.get_message()
        else:
            message = await _until_logged_in(ws.get_message, session, deadline)
        if message is None:
            return  # closed, or no login in time
        try:
            if isinstance(message, str):
                json_mode[0] = True
                frame = _decode_or_none(jsonmap.decode_json, message)
            else:
                json_mode[0] = False
                frame = _decode_or_none(wp.decode, message)
        except ProtocolError as exc:
            rid = json_rid(message) if isinstance(message, str) else 0
            await session.handle_bad_frame(exc, rid)
            continue
        message = None  # type: ignore[assignment]
        await _serve_frame(session, frame)
        frame = None  # type: ignore[assignment]  # an idle connection keeps nothing of its last request


class _WsWriter(_Writer):
    """Frames as WebSocket messages: binary, or JSON text when the client's
    last message was text; a session's close as a close frame (1008) with
    its reason."""

    __slots__ = ("_ws", "_json_mode")

    def __init__(self, ws: _WsStream, json_mode: list[bool], nursery: trio.Nursery) -> None:
        super().__init__(ws.stream, ws.session, nursery)
        self._ws = ws
        self._json_mode = json_mode

    def _encode(self, item: object) -> bytes | None:
        conn = self._ws.conn
        if conn.state is not ConnectionState.OPEN:
            return None
        data = _encode_ws(item, self._json_mode[0])  # type: ignore[arg-type]
        return conn.send(TextMessage(data) if isinstance(data, str) else BytesMessage(data))

    def _goodbye(self, item: CloseAfter) -> bytes:
        conn = self._ws.conn
        if conn.state is not ConnectionState.OPEN:
            return b""
        return conn.send(CloseConnection(code=_WS_CLOSE_POLICY, reason=item.reason[:120]))


async def run_ws_listener(node: NodeServices, host: str, port: int, task_status: trio.TaskStatus[object]) -> None:
    tls = client_tls(node)
    listeners = await trio.open_tcp_listeners(port, host=host)
    served: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if tls is not None:
        served = [trio.SSLListener(listener, tls, https_compatible=True) for listener in listeners]
    task_status.started(WebSocketServer(listeners))
    await trio.serve_listeners(functools.partial(serve_ws_stream, node), served)
