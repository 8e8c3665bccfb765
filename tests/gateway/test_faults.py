"""A node never dies of one connection: a fault injected into a real method
of a running node is answered INTERNAL to that client (under its request id
where the request is known) and logged with the connection; other clients and
the node go on. Over TCP and WebSocket."""

from __future__ import annotations

import json
import logging

import pytest
import trio
import trio_websocket

import timpy
from tests.conftest import PASSWORD, node_config, users
from timpy.errors import Code


class Injected(RuntimeError):
    """The fault the tests inject."""


def url_of(node: timpy.Node, transport: str) -> str:
    return node.tcp_url if transport == "tcp" else node.ws_url


def session_of(node: timpy.Node, name: str):  # noqa: ANN201 - the live ClientSession of a user
    (terminal,) = node.terminals.terminals(node.user_id_of(name))
    return terminal.link


async def still_serving(node: timpy.Node, transport: str) -> None:
    """The node accepts a new connection, logs in and stores a message."""
    async with timpy.connect(url_of(node, transport), "carol", PASSWORD, device="check") as c:
        ack = await c.send("bob", "the node is still here")
        assert ack.seq > 0


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_failing_handler_answers_internal_to_that_request_only(transport, monkeypatch, caplog):
    async with timpy.open_node(node_config()) as node:
        url = url_of(node, transport)
        await users(url, "alice", "bob", "carol")
        async with timpy.connect(url, "alice", PASSWORD) as a, timpy.connect(url, "bob", PASSWORD) as b:
            real_history = node.messenger.history

            async def failing_history(who, *args):  # noqa: ANN001, ANN202
                if who.name == "alice":
                    raise Injected("injected fault in history")
                return await real_history(who, *args)

            monkeypatch.setattr(node.messenger, "history", failing_history)
            with caplog.at_level(logging.ERROR, logger="timpy.gateway"):
                with pytest.raises(timpy.RemoteError) as failed:
                    await a.history("bob")
            assert failed.value.code == Code.INTERNAL
            assert any("alice" in r.getMessage() and r.exc_info and r.exc_info[0] is Injected for r in caplog.records)
            # The same connection goes on, and so does everyone else.
            await a.send("bob", "after the fault")
            assert (await b.next_message(timeout=10)).body == b"after the fault"
            assert (await b.history("alice")).messages[-1].body == b"after the fault"
        await still_serving(node, transport)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_fault_outside_the_handlers_ends_that_connection_only(transport, monkeypatch, caplog):
    """A fault that escapes request handling (here in the connection's own
    rate check) is answered INTERNAL under the request's id, that connection is
    closed and logged with its user; the node and other connections go on."""
    async with timpy.open_node(node_config()) as node:
        url = url_of(node, transport)
        await users(url, "alice", "bob", "carol")
        async with timpy.connect(url, "alice", PASSWORD) as a, timpy.connect(url, "bob", PASSWORD) as b:
            session = session_of(node, "alice")

            def failing_take(now: float) -> bool:
                raise Injected("injected fault in the rate check")

            monkeypatch.setattr(session._bucket, "take", failing_take)
            with caplog.at_level(logging.ERROR, logger="timpy.gateway"):
                with pytest.raises(timpy.RemoteError) as failed:
                    with trio.fail_after(10):
                        await a.send("bob", "never stored")
            assert failed.value.code == Code.INTERNAL
            assert any("alice" in r.getMessage() and r.exc_info and r.exc_info[0] is Injected for r in caplog.records)
            with trio.fail_after(10):
                with pytest.raises(timpy.RemoteError):  # that connection was closed
                    while True:
                        await a.ping()
                        await trio.sleep(0.05)
            await b.ping()
            assert (await b.history("alice")).messages == []
        await still_serving(node, transport)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_fault_when_a_connection_ends_does_not_stop_the_node(transport, monkeypatch, caplog):
    """Before: an exception leaving a connection's task (here while closing the
    terminal as the client goes away) ended the listener and the whole node."""
    async with timpy.open_node(node_config()) as node:
        url = url_of(node, transport)
        await users(url, "alice", "bob", "carol")
        real_close = node.deliverer.close_terminal
        alice_id = node.user_id_of("alice")

        def failing_close(terminal):  # noqa: ANN001, ANN202
            real_close(terminal)
            if terminal.user_id == alice_id:
                raise Injected("injected fault while closing a terminal")

        monkeypatch.setattr(node.deliverer, "close_terminal", failing_close)
        async with timpy.connect(url, "bob", PASSWORD) as b:
            with caplog.at_level(logging.ERROR, logger="timpy.gateway"):
                async with timpy.connect(url, "alice", PASSWORD) as a:
                    await a.send("bob", "hello")
                with trio.fail_after(10):
                    while not any(r.exc_info and r.exc_info[0] is Injected for r in caplog.records):
                        await trio.sleep(0.02)
            failure = next(r for r in caplog.records if r.exc_info and r.exc_info[0] is Injected)
            assert "alice" in failure.getMessage()
            assert (await b.next_message(timeout=10)).body == b"hello"
            await still_serving(node, transport)
            await b.ping()


async def test_undecodable_json_frames_keep_their_request_id(node):
    await users(node.tcp_url, "alice")
    async with trio_websocket.open_websocket_url(node.ws_url) as ws:

        async def call(text: str) -> dict:
            await ws.send_message(text)
            with trio.fail_after(10):
                return json.loads(await ws.get_message())

        assert "welcome" in await call(json.dumps({"rid": 1, "hello": {"version": 1, "agent": "browser"}}))
        unknown = await call(json.dumps({"rid": 7, "fly": {}}))
        assert unknown["rid"] == 7 and unknown["error"]["code"] == Code.UNKNOWN_OPERATION
        bad_field = await call(json.dumps({"rid": 8, "ping": {"nonce": "one"}}))
        assert bad_field["rid"] == 8 and bad_field["error"]["code"] == Code.BAD_FRAME
        assert "nonce" in bad_field["error"]["text"]
        # Where the id itself cannot be read, the error comes under 0.
        assert (await call("{not json"))["error"]["code"] == Code.BAD_FRAME
        assert (await call(json.dumps({"rid": "nine", "ping": {}})))["error"]["code"] == Code.BAD_FRAME
        assert (await call(json.dumps({"rid": 10, "ping": {"nonce": 3}})))["pong"]["nonce"] == 3


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_fault_pushing_to_one_terminal_ends_that_connection_only(transport, monkeypatch, caplog):
    """Pushes are built in the writer's task: before, a fault in building one
    terminal's delivery ended the writer and so the whole node."""
    async with timpy.open_node(node_config()) as node:
        url = url_of(node, transport)
        await users(url, "alice", "bob", "carol")
        async with timpy.connect(url, "alice", PASSWORD) as a, timpy.connect(url, "bob", PASSWORD) as b:
            session = session_of(node, "bob")

            def failing_frame(delivery):  # noqa: ANN001, ANN202
                raise Injected("injected fault building a delivery")

            monkeypatch.setattr(session, "_delivery_frame", failing_frame)
            with caplog.at_level(logging.ERROR, logger="timpy.gateway"):
                ack = await a.send("bob", "stored even though bob's push failed")
                with trio.fail_after(10):
                    while not any(r.exc_info and r.exc_info[0] is Injected for r in caplog.records):
                        await trio.sleep(0.02)
            failure = next(r for r in caplog.records if r.exc_info and r.exc_info[0] is Injected)
            assert "bob" in failure.getMessage()
            with trio.fail_after(10):
                with pytest.raises(timpy.RemoteError):  # bob's connection was closed
                    while True:
                        await b.ping()
                        await trio.sleep(0.05)
            # The writer goes on: alice stores more, and bob finds everything on a new connection.
            await a.send("bob", "after the fault")
            history = (await a.history("bob")).messages
            assert [m.body for m in history][-2:] == [b"stored even though bob's push failed", b"after the fault"]
            assert history[-2].seq == ack.seq
        await still_serving(node, transport)
