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


class _Outbox:
    """A transport that keeps what it is given to send."""

    address = "127.0.0.1:1"

    def __init__(self) -> None:
        self.sent: list[tuple[str, list]] = []

    def send(self, address: str, payload: bytes) -> None:
        import msgpack

        self.sent.append((address, msgpack.unpackb(payload, raw=False)))


async def test_a_handler_that_waits_runs_in_a_task_of_its_own_and_its_answer_goes_back():
    """Requests whose handlers wait are started as they arrive (one that came
    before the request task ran, once it runs), each in a task of its own
    (trio picks the order in which new tasks first run), and each answer
    goes back to whoever asked."""
    from timpy.cluster.rpc import REPLY, REQUEST

    outbox = _Outbox()
    rpc = Rpc(outbox)
    started: list[bytes] = []

    def handler(args):  # noqa: ANN001, ANN202
        async def answer():  # noqa: ANN202
            started.append(args.user_id)
            await trio.sleep(0.01 if args.user_id == b"early" else 0)
            return None
        return answer()

    rpc.serve(ops.ACCT_GET, handler)

    def request(rid: int, who: bytes) -> list:
        return [REQUEST, rid, "127.0.0.1:9", ops.ACCT_GET.number, ops.ACCT_GET.encode_args(ops.AccountGet(who, False))]

    rpc.receive(request(1, b"early"))  # before the request task runs: kept, then started first
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run)
        for rid in range(2, 6):
            rpc.receive(request(rid, b"u%d" % rid))
        with trio.fail_after(5):
            while len(outbox.sent) < 5:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert sorted(started) == [b"early", b"u2", b"u3", b"u4", b"u5"]
    assert sorted(reply[1] for _, reply in outbox.sent) == [1, 2, 3, 4, 5]
    assert all(address == "127.0.0.1:9" and reply[0] == REPLY and reply[2] == 0 for address, reply in outbox.sent)


async def test_a_calls_answer_is_handed_to_then_once_and_read_by_outcome():
    """``Call.then``: the callback gets the call when its answer is read, once
    (a second answer to the same request is ignored); ``outcome`` gives the
    result or raises the error the answer carries; after ``forget`` a late
    answer reaches nobody."""
    from timpy.cluster.rpc import REPLY
    from timpy.errors import TimpyError

    outbox = _Outbox()
    rpc = Rpc(outbox)
    seen: list = []
    ok = rpc.start_call("127.0.0.1:2", ops.ACCT_EXISTS, ops.AccountExists(b"id"))
    bad = rpc.start_call("127.0.0.1:3", ops.ACCT_EXISTS, ops.AccountExists(b"id"))
    late = rpc.start_call("127.0.0.1:4", ops.ACCT_EXISTS, ops.AccountExists(b"id"))
    for call in (ok, bad, late):
        call.then(seen.append)
    rids = [request[1] for _, request in outbox.sent]
    assert not ok.answered()
    rpc.receive([REPLY, rids[0], 0, ops.ACCT_EXISTS.encode_result(True)])
    rpc.receive([REPLY, rids[0], 0, ops.ACCT_EXISTS.encode_result(False)])  # a duplicate: ignored
    rpc.receive([REPLY, rids[1], int(Code.NO_SUCH_USER), "no such user"])
    late.forget()
    rpc.receive([REPLY, rids[2], 0, ops.ACCT_EXISTS.encode_result(True)])
    assert seen == [ok, bad]
    assert ok.answered() and ok.outcome(1.0) is True
    try:
        bad.outcome(1.0)
    except TimpyError as exc:
        assert exc.code == Code.NO_SUCH_USER and exc.text == "no such user"
    else:
        raise AssertionError("an error answer must raise")
    try:
        late.outcome(1.0)
    except PeerUnavailable:
        pass
    else:
        raise AssertionError("a forgotten call has no answer")
