"""Errors from node-to-node requests reach users in plain words: what the
silent node holds, never the internal operation's name."""

from __future__ import annotations

import re

import trio
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster import catalog as ops
from timpy.cluster.rpc import PeerUnavailable, Rpc, holds
from timpy.cluster.transport import MemoryNetwork, MemoryTransport
from timpy.errors import Code
from timpy.gateway.session import in_users_words
from timpy.wire import protocol as wp

_INTERNAL_NAME = re.compile(r"\b[a-z_]+\.[a-z_]+\b")


@given(st.sampled_from(["acct.get", "acct.exists", "conv.append", "inbox.append", "group.request", "presence.get",
                        "copies.user", "term.open", "files.chunk", "x.y", "nodots"]), st.floats(0.1, 60))
def test_a_silent_peer_is_named_by_what_it_holds(method, timeout):
    exc = PeerUnavailable("10.0.0.1:7072", method, timeout)
    assert exc.code == Code.UNAVAILABLE
    assert method not in exc.text and "10.0.0.1" not in exc.text
    assert not _INTERNAL_NAME.search(exc.text.replace(f"{timeout:g}", ""))
    assert exc.text.startswith(f"the node that holds {holds(method)} did not answer")
    assert "try again in a few seconds" in exc.text


def test_the_request_names_whose_account_or_conversation():
    login = wp.make_frame("login", rid=1, name="alice", password="x")
    text = in_users_words(PeerUnavailable("a:1", "acct.get", 5), login).text
    assert text.startswith("the node that holds alice's account did not answer within 5 s")
    send = wp.make_frame("send", rid=2, message=wp.Message(recipient="bob", client_id="c", body=b"x"))
    assert "your conversation with bob" in in_users_words(PeerUnavailable("a:1", "conv.append", 5), send).text
    assert "bob's account" in in_users_words(PeerUnavailable("a:1", "acct.exists", 5), send).text
    assert in_users_words(PeerUnavailable("a:1", "inbox.append", 5), send).text.startswith(
        "the node that holds bob's inbox")


async def test_a_call_nobody_answers_fails_unavailable_in_plain_words():
    network = MemoryNetwork()
    network.down.add("127.0.0.1:2")  # the node that was asked has stopped
    rpc = Rpc(MemoryTransport(network, "127.0.0.1:1"))
    try:
        with trio.fail_after(5):
            await rpc.call("127.0.0.1:2", ops.ACCT_GET, ops.AccountGet(b"id", False), timeout=0.05)
    except PeerUnavailable as exc:
        assert exc.method == "acct.get" and exc.address == "127.0.0.1:2"
        assert "acct.get" not in exc.text and "the account" in exc.text
    else:
        raise AssertionError("a call nobody answers must fail")


async def test_handlers_still_waiting_when_the_node_stops_are_closed_and_later_requests_refused():
    """A request whose handler waits is queued for the request task; when the
    node stops, the queued ones are closed (not left to the garbage
    collector, which warns of coroutines never awaited), and a request that
    arrives after answers UNAVAILABLE without running its handler."""
    from timpy.cluster.rpc import REQUEST

    network = MemoryNetwork()
    rpc = Rpc(MemoryTransport(network, "127.0.0.1:1"))
    made: list = []

    def handler(args):  # noqa: ANN001, ANN202
        async def answer():  # noqa: ANN202
            await trio.sleep(1)
        coroutine = answer()
        made.append(coroutine)
        return coroutine

    rpc.serve(ops.ACCT_GET, handler)
    args = ops.ACCT_GET.encode_args(ops.AccountGet(b"id", False))
    rpc.receive([REQUEST, 7, "127.0.0.1:2", ops.ACCT_GET.number, args])  # queued: the request task is not running
    with trio.CancelScope() as scope:
        scope.cancel()
        await rpc.run()  # stops at once, as at a node's shutdown
    assert len(made) == 1 and made[0].cr_frame is None  # closed
    rpc.receive([REQUEST, 8, "127.0.0.1:2", ops.ACCT_GET.number, args])
    assert len(made) == 2 and made[1].cr_frame is None
