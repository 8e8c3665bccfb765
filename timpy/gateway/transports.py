"""Client transports: length-prefixed thrift over TCP, and WebSocket
(binary messages: thrift; text messages: the JSON mapping)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio
from thriftpy2.thrift import TPayload
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from timpy.errors import Code, ProtocolError
from timpy.gateway.session import ClientSession, CloseAfter, error_frame
from timpy.wire import jsonmap
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

if TYPE_CHECKING:
    from timpy.node.node import Node

log = logging.getLogger("timpy.gateway")
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


@contextmanager
def _ends_connection(nursery: trio.Nursery) -> Iterator[None]:
    """A peer that went away ends its connection's tasks, and nothing else."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        pass
    nursery.cancel_scope.cancel()


_FULL = ProtocolError("the node has too many connections; try another node or later", Code.TOO_MANY_CONNECTIONS)


async def serve_tcp_stream(node: Node, stream: trio.abc.Stream) -> None:
    """Serve one client over a byte stream in the TCP framing: a socket, or an
    in-memory stream (``timpy.testing``)."""
    try:
        host, port = stream.socket.getpeername()[:2]
        peer = f"{host}:{port}"
    except (OSError, AttributeError):  # AttributeError: an in-memory stream (timpy.testing) has no socket
        peer = "?"
    if not node.gate.admit():
        try:
            await stream.send_all(frame_bytes(wp.encode(error_frame(0, _FULL))))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await stream.aclose()
        return
    session = ClientSession(node, peer)
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    with _ends_connection(nursery):
                        await read_frames()

                async def read_frames() -> None:
                    decoder = FrameDecoder(node.config.limits.max_frame)
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        try:
                            bodies = decoder.feed(data)
                        except ProtocolError as exc:
                            session.fail(exc)  # the stream is out of step now
                            await _let_writer_close()
                            return
                        for body in bodies:
                            try:
                                frame = wp.decode(body)
                            except ProtocolError as exc:
                                await session.handle_bad_frame(exc)
                                continue
                            await session.handle(frame)
                    nursery.cancel_scope.cancel()

                async def write() -> None:
                    with _ends_connection(nursery):
                        await write_frames()

                async def write_frames() -> None:
                    async for item in session.outbound:
                        batch = [item]
                        while len(batch) < _WRITE_BATCH and not isinstance(batch[-1], CloseAfter):
                            try:
                                batch.append(session.outbound.receive_nowait())
                            except trio.WouldBlock:
                                break
                        data = b"".join(frame_bytes(wp.encode(f)) for f in batch if not isinstance(f, CloseAfter))
                        if data:
                            await stream.send_all(data)
                        if isinstance(batch[-1], CloseAfter):
                            break
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                nursery.start_soon(write)
                nursery.start_soon(session.watch_handshake)
    finally:
        session.finish()
        node.gate.leave()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def run_tcp_listener(node: Node, host: str, port: int, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await serve_tcp_stream(node, stream)

    await trio.serve_tcp(handler, port, host=host, task_status=task_status)


def _encode_ws(frame: TPayload, json_mode: bool) -> bytes | str:
    return jsonmap.encode_json(frame) if json_mode else wp.encode(frame)


async def serve_websocket_request(node: Node, request: WebSocketRequest) -> None:
    if not node.gate.admit():
        ws = await request.accept()
        try:
            await ws.send_message(wp.encode(error_frame(0, _FULL)))
            await ws.aclose(code=1013, reason="too many connections")
        except ConnectionClosed:
            pass
        return
    ws = await request.accept()
    remote = ws.remote
    peer = f"{getattr(remote, 'address', '?')}:{getattr(remote, 'port', '?')}"
    session = ClientSession(node, peer)
    json_mode = False
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    with _ends_connection(nursery):
                        await read_messages()

                async def read_messages() -> None:
                    nonlocal json_mode
                    while True:
                        message = await ws.get_message()
                        try:
                            if isinstance(message, str):
                                json_mode = True
                                frame = jsonmap.decode_json(message)
                            else:
                                json_mode = False
                                frame = wp.decode(message)
                        except ProtocolError as exc:
                            await session.handle_bad_frame(exc)
                            continue
                        await session.handle(frame)

                async def write() -> None:
                    with _ends_connection(nursery):
                        await write_messages()

                async def write_messages() -> None:
                    async for item in session.outbound:
                        if isinstance(item, CloseAfter):
                            await ws.aclose(code=1008, reason=item.reason[:120])
                            break
                        await ws.send_message(_encode_ws(item, json_mode))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                nursery.start_soon(write)
                nursery.start_soon(session.watch_handshake)
    finally:
        session.finish()
        node.gate.leave()
        with trio.CancelScope(shield=True):
            await ws.aclose()


async def run_ws_listener(node: Node, host: str, port: int, task_status: trio.TaskStatus[object]) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await serve_websocket_request(node, request)

    async with trio.open_nursery() as handlers:
        await serve_websocket(
            handler,
            host,
            port,
            ssl_context=None,
            handler_nursery=handlers,
            max_message_size=node.config.limits.max_frame,
            task_status=task_status,
        )
