"""Client transports: length-prefixed thrift over TCP, and WebSocket
(binary messages: thrift; text messages: the JSON mapping), each optionally
in TLS (``tls_cert``/``tls_key``: clients use ``tcps://`` and ``wss://``).

Every connection runs in its own tasks; a fault in them ends that connection
alone, logged with the peer and user, never the listener or the node."""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio
from thriftpy2.thrift import TPayload
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from timpy.errors import Code, ProtocolError, TimpyError
from timpy.gateway.session import (
    ClientSession,
    CloseAfter,
    Encoded,
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


_PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed)


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
                        out = _TcpWriter(stream, session, nursery)
                        session.wake = out.wake
                        session.direct = out.direct_writer()
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


class _Rest:
    """Outbound marker: the rest of a frame a direct write began (bytes as they go)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _TcpWriter:
    """A TCP connection's writing side. Its task runs only while frames wait
    in ``session.outbound`` (``wake`` starts it; it ends once they are all
    written): an idle connection is one task, not two.

    ``direct_writer`` writes a frame straight to the socket, in the caller's
    task, when no writer task is running (nothing queued): a group message
    to 10,000 members was 10,000 channel hops and task switches, each
    waking a writer for one frame; a member's socket almost always has room,
    so the frame goes out at once. When the writer is running, the socket
    full, or the stream not a plain socket (TLS, the in-memory streams of
    ``timpy.testing``), the frame is queued; a frame the socket took only
    part of leaves its rest to the writer, ahead of anything queued after it."""

    __slots__ = ("_stream", "_session", "_nursery", "running")

    def __init__(self, stream: trio.abc.Stream, session: ClientSession, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._session = session
        self._nursery = nursery
        self.running = False

    def wake(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            self._nursery.start_soon(self._write)
        except RuntimeError:  # the connection is ending: nothing more is written
            pass

    def direct_writer(self) -> Callable[[object], bool] | None:
        stream = self._stream
        if type(stream) is not trio.SocketStream:
            return None
        sock = stream.socket
        queue = self._session.outbound_send

        def write(item: object) -> bool:
            if self.running:
                return False  # frames are queued: keep the order
            fd = sock.fileno()
            if fd < 0:
                return False
            data = _wire_bytes(item)
            try:
                sent = os.write(fd, data)
            except OSError:
                return False  # full (BlockingIOError) or broken: the writer meets it
            if sent < len(data):
                queue.send_nowait(_Rest(data[sent:]))  # type: ignore[arg-type]
                self.wake()
            return True

        return write

    async def _write(self) -> None:
        outbound = self._session.outbound
        ending = False
        try:
            while not ending:
                batch: list[object] = []
                while len(batch) < _WRITE_BATCH:
                    try:
                        item = outbound.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        ending = True
                        break
                    if isinstance(item, CloseAfter):
                        ending = True
                        break
                    batch.append(item)
                if not batch and not ending:
                    self.running = False  # all written: the task ends until the next frame
                    return
                data = b"".join([_wire_bytes(f) for f in batch])
                batch = None  # type: ignore[assignment]  # nothing sent is kept
                if data:
                    await self._stream.send_all(data)
                data = None  # type: ignore[assignment]
        except _PEER_GONE:
            pass
        self._nursery.cancel_scope.cancel()  # closed by the session, or the peer went away


def _wire_bytes(item: object) -> bytes:
    kind = type(item)
    if kind is Encoded:
        return item.wire()  # type: ignore[union-attr]
    return item.data if kind is _Rest else frame_bytes(encode_out(item))  # type: ignore[union-attr, arg-type]


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


async def serve_websocket_request(node: NodeServices, request: WebSocketRequest) -> None:
    if not node.gate.admit():
        ws = await request.accept()
        try:
            await ws.send_message(wp.encode(error_frame(0, _FULL)))
            await ws.aclose(code=1013, reason="too many connections")
        except ConnectionClosed:
            pass
        return
    ws: WebSocketConnection | None = None
    session: ClientSession | None = None
    with _one_connection(node, lambda: describe(session) if session else "a WebSocket client"):
        try:
            ws = await request.accept()
            remote = ws.remote
            peer = f"{getattr(remote, 'address', '?')}:{getattr(remote, 'port', '?')}"
            session = ClientSession(node, peer)
            await _serve_ws_session(ws, session)
        except Exception:
            if ws is not None:
                await _close_with_error(lambda: ws.send_message(wp.encode(error_frame(0, _INTERNAL))))
            raise
        finally:
            node.gate.leave()
            if ws is not None:
                with trio.CancelScope(shield=True):
                    await ws.aclose()


async def _serve_ws_session(ws: WebSocketConnection, session: ClientSession) -> None:
    """As a TCP connection (``serve_tcp_stream``): read in this task, write in
    another only while something is queued."""
    json_mode = [False]  # the last message's kind: the replies follow it
    deadline = trio.current_time() + session.node.config.limits.handshake_timeout
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:
                session.wake = _WsWriter(ws, session, json_mode, nursery).wake
                with _ends_connection(nursery):
                    await _read_ws_messages(ws, session, json_mode, deadline)
    finally:
        session.finish()


async def _read_ws_messages(ws: WebSocketConnection, session: ClientSession, json_mode: list[bool], deadline: float) -> None:
    while True:
        if session.identity is not None:
            message = await ws.get_message()
        else:
            message = await _until_logged_in(ws.get_message, session, deadline)
        if message is None:
            return  # no login in time
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


class _WsWriter:
    """A WebSocket connection's writing side, run as ``_TcpWriter``'s: a task
    only while frames wait in ``session.outbound``."""

    __slots__ = ("_ws", "_session", "_json_mode", "_nursery", "running")

    def __init__(self, ws: WebSocketConnection, session: ClientSession, json_mode: list[bool],
                 nursery: trio.Nursery) -> None:
        self._ws = ws
        self._session = session
        self._json_mode = json_mode
        self._nursery = nursery
        self.running = False

    def wake(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            self._nursery.start_soon(self._write)
        except RuntimeError:  # the connection is ending: nothing more is written
            pass

    async def _write(self) -> None:
        outbound = self._session.outbound
        try:
            while True:
                try:
                    item = outbound.receive_nowait()
                except trio.WouldBlock:
                    self.running = False  # all written: the task ends until the next frame
                    return
                except trio.EndOfChannel:
                    break
                if isinstance(item, CloseAfter):
                    await self._ws.aclose(code=1008, reason=item.reason[:120])
                    break
                data = _encode_ws(item, self._json_mode[0])
                item = None  # type: ignore[assignment]
                await self._ws.send_message(data)
                data = None  # type: ignore[assignment]
        except _PEER_GONE:
            pass
        self._nursery.cancel_scope.cancel()  # closed by the session, or the peer went away


async def run_ws_listener(node: NodeServices, host: str, port: int, task_status: trio.TaskStatus[object]) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await serve_websocket_request(node, request)

    async with trio.open_nursery() as handlers:
        await serve_websocket(
            handler,
            host,
            port,
            ssl_context=client_tls(node),
            handler_nursery=handlers,
            max_message_size=node.config.limits.max_frame,
            task_status=task_status,
        )
