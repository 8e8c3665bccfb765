"""Bad input to a live gateway: each gets a clear error for that client
alone; other clients and stored data are untouched."""

import json

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timpy
from tests.conftest import PASSWORD, node_config, users
from tests.support.raw_frames import Raw
from timpy.config import Limits
from timpy.errors import Code
from timpy.wire import protocol as wp
from timpy.wire.framing import frame_bytes


async def expect_error(raw: Raw, code: Code) -> None:
    op, body = await raw.receive()
    assert op == "error", (op, body)
    assert body.code == code, body


async def test_first_frame_must_be_hello(node):
    raw = await Raw.open(node)
    await raw.send("ping", nonce=1)
    await expect_error(raw, Code.HANDSHAKE_REQUIRED)
    assert await raw.closed()


async def test_wrong_version_is_refused(node):
    raw = await Raw.open(node)
    await raw.send("hello", version=99)
    await expect_error(raw, Code.VERSION_UNSUPPORTED)
    assert await raw.closed()


async def test_requests_before_login_and_server_operations(node):
    raw = await Raw.open(node)
    await raw.hello()
    await raw.send("send", message=wp.Message(recipient="x", client_id="1", body=b"x"))
    await expect_error(raw, Code.AUTH_REQUIRED)
    await raw.send("welcome", version=1)
    await expect_error(raw, Code.UNKNOWN_OPERATION)
    await raw.stream.send_all(frame_bytes(wp.encode(wp.thrift.Frame(rid=5))))
    await expect_error(raw, Code.UNKNOWN_OPERATION)
    await raw.stream.send_all(frame_bytes(b"\x0b\x00\x01\x7f\xff\xff\xff"))
    await expect_error(raw, Code.BAD_FRAME)
    await raw.send("ping", nonce=7)  # the connection is still usable
    op, body = await raw.receive()
    assert op == "pong" and body.nonce == 7


async def test_oversize_frame_closes_before_the_body_is_read():
    async with timpy.open_node(node_config(limits=Limits(max_frame=1024, max_body=512))) as node:
        raw = await Raw.open(node)
        await raw.hello()
        await raw.stream.send_all((10_000_000).to_bytes(4, "big"))  # no body follows
        await expect_error(raw, Code.FRAME_TOO_LARGE)
        assert await raw.closed()


async def test_flood_is_rate_limited_then_closed_others_unharmed():
    limits = Limits(rate_per_connection=20, burst_per_connection=20, rate_violations_before_close=30)
    async with timpy.open_node(node_config(limits=limits)) as node:
        await users(node.tcp_url, "alice", "bob")
        async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
            raw = await Raw.open(node)
            await raw.hello()
            data = b"".join(frame_bytes(wp.encode(wp.make_frame("ping", rid=i, nonce=i))) for i in range(200))
            await raw.stream.send_all(data)
            codes = []
            with trio.fail_after(10):
                while (got := await raw.receive()) is not None:
                    if got[0] == "error":
                        codes.append(got[1].code)
            assert Code.RATE_LIMITED in codes  # then closed: receive returned None
            await a.send("bob", "still fine")
            assert (await b.next_message(timeout=5)).body == b"still fine"


async def test_connection_limit():
    async with timpy.open_node(node_config(limits=Limits(max_connections=2))) as node:
        r1, r2 = await Raw.open(node), await Raw.open(node)
        await r1.hello()
        await r2.hello()
        r3 = await Raw.open(node)
        await expect_error(r3, Code.TOO_MANY_CONNECTIONS)
        assert await r3.closed()
        await r1.stream.aclose()
        await trio.sleep(0.1)
        r4 = await Raw.open(node)
        await r4.hello()  # a place was freed


async def test_no_login_within_the_handshake_timeout_closes():
    async with timpy.open_node(node_config(limits=Limits(handshake_timeout=0.3))) as node:
        raw = await Raw.open(node)
        await raw.hello()
        await expect_error(raw, Code.AUTH_REQUIRED)
        assert await raw.closed()


async def test_websocket_json_and_bad_json(node):
    await users(node.tcp_url, "alice", "bob")
    async with trio_websocket.open_websocket_url(node.ws_url) as ws:
        async def call(obj: object) -> dict:
            await ws.send_message(obj if isinstance(obj, str) else json.dumps(obj))
            while True:  # skip pushes (our own send echoed to this terminal)
                reply = json.loads(await ws.get_message())
                if "delivery" not in reply:
                    return reply

        assert "welcome" in await call({"rid": 1, "hello": {"version": 1, "agent": "browser"}})
        assert (await call("{not json"))["error"]["code"] == Code.BAD_FRAME
        assert (await call({"rid": 2, "fly": {}}))["error"]["code"] == Code.UNKNOWN_OPERATION
        ok = await call({"rid": 3, "login": {"name": "alice", "password": PASSWORD, "device": "web"}})
        assert ok["login_ok"]["user"] == "alice"
        assert "sync_done" in json.loads(await ws.get_message())
        ack = await call({"rid": 4, "send": {"message": {"recipient": "bob", "client_id": "c1", "body": "aGk="}}})
        assert ack["ack"]["seq"] == 1 and ack["rid"] == 4
    async with timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
        assert (await b.next_message(timeout=5)).body == b"hi"


async def test_oversize_websocket_message_closes():
    async with timpy.open_node(node_config(limits=Limits(max_frame=1024, max_body=512))) as node:
        async with trio_websocket.open_websocket_url(node.ws_url) as ws:
            await ws.send_message(b"x" * 5000)
            with pytest.raises(trio_websocket.ConnectionClosed):
                with trio.fail_after(5):
                    await ws.get_message()
                    await ws.get_message()


async def test_websocket_protocol_ping_fragments_close_and_plain_http(node):
    """The node's own WebSocket server (wsproto over the socket): pings are
    answered, a message in several frames is one message, a close is
    answered with the same code, an oversize message or a session that
    closes sends its code, and a request that is not a WebSocket upgrade gets
    400 (the listener goes on)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request

    host, port = node.ws_address

    async def open_raw() -> tuple[trio.SocketStream, WSConnection]:
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="localhost", target="/")))
        return stream, ws

    async def events(stream: trio.SocketStream, ws: WSConnection, until: type) -> list:
        got: list = []
        with trio.fail_after(5):
            while not any(isinstance(e, until) for e in got):
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                got += list(ws.events())
        return got

    stream, ws = await open_raw()
    assert any(isinstance(e, AcceptConnection) for e in await events(stream, ws, AcceptConnection))
    await stream.send_all(ws.send(Ping(b"p1")))
    assert [e.payload for e in await events(stream, ws, Pong) if isinstance(e, Pong)] == [b"p1"]
    hello = wp.encode(wp.make_frame("hello", rid=7, version=1, agent="raw"))
    await stream.send_all(ws.send(BytesMessage(hello[:5], message_finished=False)) + ws.send(BytesMessage(hello[5:])))
    got = await events(stream, ws, BytesMessage)
    reply = wp.decode(b"".join(e.data for e in got if isinstance(e, BytesMessage)))
    assert reply.welcome is not None and reply.rid == 7
    await stream.send_all(ws.send(CloseConnection(code=1000, reason="bye")))
    assert [e.code for e in await events(stream, ws, CloseConnection) if isinstance(e, CloseConnection)] == [1000]
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""  # and the node hangs up
    await stream.aclose()

    stream, ws = await open_raw()  # a session that closes the connection: 1008 with its reason
    await events(stream, ws, AcceptConnection)
    await stream.send_all(ws.send(BytesMessage(b"\x00" * 3)) * 60)  # bad frames until the node gives up
    closes = [e for e in await events(stream, ws, CloseConnection) if isinstance(e, CloseConnection)]
    assert closes[0].code == 1008 and closes[0].reason
    await stream.aclose()

    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 400")
    await stream.aclose()
    async with trio_websocket.open_websocket_url(node.ws_url) as w:  # the listener goes on
        await w.send_message(hello)
        assert wp.decode(await w.get_message()).welcome is not None


_mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seeds=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.builds(lambda m: ("mutate", m), _mutations),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_random_and_mutated_frames_never_harm_the_node(seeds):
    """Throw random and mutated frames at a live gateway after login; the
    node answers or closes that connection, and an honest client is unharmed."""

    async def main() -> None:
        async with timpy.open_node(node_config()) as node:
            await users(node.tcp_url, "alice", "bob")
            async with timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
                valid = wp.encode(
                    wp.make_frame("send", rid=9, message=wp.Message(recipient="bob", client_id="z", body=b"zz"))
                )
                raw = await Raw.open(node)
                await raw.hello()
                await raw.send("login", rid=2, name="alice", password=PASSWORD, device="fuzz")
                assert (await raw.receive())[0] == "login_ok"
                payload = b""
                for seed in seeds:
                    if isinstance(seed, tuple):
                        body = bytearray(valid)
                        for i, v in seed[1]:
                            body[i % len(body)] = v
                        payload += frame_bytes(bytes(body))
                    else:
                        payload += seed  # raw bytes: may break framing itself
                try:
                    await raw.stream.send_all(payload)
                except trio.BrokenResourceError:
                    pass
                with trio.move_on_after(0.3):
                    try:
                        while await raw.receive() is not None:
                            pass
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                await raw.stream.aclose()
                async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="honest") as a:
                    await a.send("bob", "after the storm")
                # bob sees only well-formed messages, in order, ending with the honest one
                seen = []
                with trio.fail_after(5):
                    while not seen or seen[-1].body != b"after the storm":
                        seen.append(await b.next_message())
                assert [m.seq for m in seen] == sorted(m.seq for m in seen)
                page = await b.history("alice", limit=200)
                assert [m.seq for m in page.messages] == list(range(1, len(page.messages) + 1))

    trio.run(main)
