"""The connection writers of gateway/listeners.py, over a real socket pair
and a real session: frames written at once while the socket takes them,
held for the scheduling round and written together while the socket takes
them, queued (with the rest of a partial write first) once it is full, all of
them read back in order; the writer task ends when the queue is empty; a
session's close ends a WebSocket with its reason."""

from collections.abc import Callable

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from timpy.errors import Code, TimpyError
from timpy.gateway.listeners import _TcpWriter, _ws_handshake, _WsStream, _WsWriter
from timpy.gateway.session import ClientSession, error_frame
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder

TEXT = "x" * 2000  # each frame about 2 KiB: the socket pair fills after some hundreds


def frame(rid: int) -> object:
    return error_frame(rid, TimpyError(TEXT, Code.BAD_REQUEST))


def socket_session(node: object) -> tuple[trio.SocketStream, trio.SocketStream, ClientSession]:
    """Both ends of a socket pair (client, server) and a session for the server's."""
    client_sock, server_sock = trio.socket.socketpair()
    return trio.SocketStream(client_sock), trio.SocketStream(server_sock), ClientSession(node, "socketpair")  # type: ignore[arg-type]


async def read_rids(client: trio.SocketStream, decoder: FrameDecoder, rids: list[int], until: int) -> list[int]:
    """Read frames until ``until`` request ids are in ``rids``."""
    while len(rids) < until:
        rids += [wp.decode(body).rid for body in decoder.feed(await client.receive_some(65536))]
    return rids


def offer(session: ClientSession, writer: object, first: int, count: int) -> int:
    """Push ``count`` frames as ``ClientSession.push_nowait`` does; returns the last rid."""
    for rid in range(first, first + count):
        if not writer.write_now(frame(rid)):  # type: ignore[attr-defined]
            session.queue(frame(rid))
    return first + count - 1


async def offer_until_full(session: ClientSession, writer: object, extra: int = 50) -> int:
    """Push frames in one scheduling round (a plain socket's writer holds
    them until the round ends, then writes them in one call) until the
    socket pair cannot take them all, then ``extra`` more while the writer
    task runs; returns how many were pushed."""
    last = 0
    for _ in range(40):
        last = offer(session, writer, last + 1, 200)
        await trio.sleep(0)  # the round ends: what was held is written
        await trio.sleep(0)
        if getattr(writer, "running", True):
            return offer(session, writer, last + 1, extra)
    raise AssertionError("the socket pair never filled")


async def connection(session: ClientSession, make_writer: Callable[[trio.Nursery], object],
                     task_status: trio.TaskStatus[tuple[object, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """A connection's nursery with its writer, offered frames until the
    socket is full; it ends when the writer ends it (after a close)."""
    async with trio.open_nursery() as nursery:
        writer = make_writer(nursery)
        session.attach_writer(writer)  # type: ignore[arg-type]
        task_status.started((writer, await offer_until_full(session, writer)))
        await trio.sleep_forever()


async def test_tcp_writer_writes_at_once_then_queues_in_order(node):
    client, server, session = socket_session(node)
    with trio.fail_after(30):  # a bound on a hang, not a measurement
        async with trio.open_nursery() as test:
            writer, pushed = await test.start(connection, session, lambda n: _TcpWriter(server, session, n))
            assert writer.running  # the socket is full: the writer task runs
            decoder, rids = FrameDecoder(1 << 20), []
            assert await read_rids(client, decoder, rids, pushed) == list(range(1, pushed + 1))
            await trio.testing.wait_all_tasks_blocked()
            assert not writer.running  # all written: the writer task ended
            assert writer.write_now(frame(pushed + 1))  # and the next frame is taken at once again (held for the round)
            assert [wp.decode(b).rid for b in decoder.feed(await client.receive_some(65536))] == [pushed + 1]
            session.close("bye")  # the writer ends the connection's nursery, so ``test`` ends
    await client.aclose()
    await server.aclose()


async def test_frames_held_for_the_round_go_before_frames_queued_after_them(node):
    client, server, session = socket_session(node)
    with trio.fail_after(30):  # a bound on a hang, not a measurement
        async with trio.open_nursery() as nursery:
            writer = _TcpWriter(server, session, nursery)
            session.attach_writer(writer)
            assert writer.write_now(frame(1)) and writer.write_now(frame(2))  # held until the round ends
            session.queue(frame(3))  # a reply: the writer task starts, and writes what was held first
            assert not writer.write_now(frame(4))  # the writer runs: queued behind 3
            session.queue(frame(4))
            decoder, rids = FrameDecoder(1 << 20), []
            assert await read_rids(client, decoder, rids, 4) == [1, 2, 3, 4]
            await trio.testing.wait_all_tasks_blocked()
            assert writer.write_now(frame(5)) and writer.write_now(frame(6))
            assert await read_rids(client, decoder, rids, 6) == [1, 2, 3, 4, 5, 6]  # the round's flush writes both
            nursery.cancel_scope.cancel()
    await client.aclose()
    await server.aclose()


async def test_websocket_writer_writes_messages_in_order_and_closes_with_the_reason(node):
    client_sock, server_sock = trio.socket.socketpair()
    client, server = trio.SocketStream(client_sock), trio.SocketStream(server_sock)
    ws_client = WSConnection(ConnectionType.CLIENT)
    await client.send_all(ws_client.send(Request(host="localhost", target="/")))
    conn = await _ws_handshake(server, 5)
    assert conn is not None
    ws_client.receive_data(await client.receive_some(65536))
    assert any(isinstance(e, AcceptConnection) for e in ws_client.events())
    session = ClientSession(node, "socketpair")
    with trio.fail_after(30):  # a bound on a hang, not a measurement
        async with trio.open_nursery() as test:
            writer, pushed = await test.start(
                connection, session, lambda n: _WsWriter(_WsStream(server, conn, session, 1 << 20), [False], n)
            )
            assert writer.running
            session.close("bye")
            rids: list[int] = []
            part = b""
            closed = None
            while closed is None:
                data = await client.receive_some(65536)
                assert data, "the connection ended without a close frame"
                ws_client.receive_data(data)
                for event in ws_client.events():
                    if isinstance(event, BytesMessage):  # wsproto hands over a message as its bytes arrive
                        part += event.data
                        if event.message_finished:
                            rids.append(wp.decode(part).rid)
                            part = b""
                    elif isinstance(event, CloseConnection):
                        closed = event
    assert rids == list(range(1, pushed + 1))
    assert (closed.code, closed.reason) == (1008, "bye")
    await client.aclose()
    await server.aclose()
