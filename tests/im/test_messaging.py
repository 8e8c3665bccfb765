"""1:1 messaging through a real in-process node and the client library."""

import dataclasses

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, node_config, users
from timpy.errors import Code, RemoteError


async def test_send_ack_push_and_history(node):
    await users(node.tcp_url, "alice", "bob")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.ws_url, "bob", PASSWORD) as b:
        ack = await a.send("bob", "hello")
        assert ack.seq == 1 and not ack.duplicate
        m = await b.next_message(timeout=5)
        assert (m.sender, m.recipient, m.body, m.seq, m.conversation) == ("alice", "bob", b"hello", 1, ack.conversation)
        await b.send("alice", "hi back")
        page = await a.history("bob")
        assert [(x.seq, x.body) for x in page.messages] == [(1, b"hello"), (2, b"hi back")]
        assert (await b.history(conversation=ack.conversation)).messages == page.messages


async def test_retry_with_same_client_id_is_stored_once(node):
    await users(node.tcp_url, "alice", "bob")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
        first = await a.send("bob", "once", client_id="m-1")
        again = await a.send("bob", "once", client_id="m-1")
        assert again.duplicate and again.seq == first.seq
        await a.send("bob", "twice", client_id="m-2")
        got = [await b.next_message(timeout=5) for _ in range(2)]
        assert [m.body for m in got] == [b"once", b"twice"]
        with trio.move_on_after(0.3):
            extra = await b.next_message()
            pytest.fail(f"delivered twice: {extra}")
        assert len((await a.history("bob")).messages) == 2


async def test_concurrent_senders_keep_one_order(node):
    await users(node.tcp_url, "alice", "bob")
    n = 40
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(a.send, "bob", f"a{i}")
                nursery.start_soon(b.send, "alice", f"b{i}")
        page = await a.history("bob", limit=200)
        assert [m.seq for m in page.messages] == list(range(1, 2 * n + 1))
        # each side receives the other's messages in sequence order
        got = [await b.next_message(timeout=5) for _ in range(n)]
        assert [m.seq for m in got] == sorted(m.seq for m in got)
        assert {m.body for m in got} == {f"a{i}".encode() for i in range(n)}


async def test_offline_messages_arrive_on_login_in_order_once(node):
    await users(node.tcp_url, "alice", "bob")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
        for i in range(30):
            await a.send("bob", f"m{i}")
    async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as b:
        got = [await b.next_message(timeout=5) for _ in range(30)]
        assert [m.body for m in got] == [f"m{i}".encode() for i in range(30)]
        await b.wait_synced()
    # acknowledged: the same device is not given them again
    async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as b:
        await b.wait_synced()
        with trio.move_on_after(0.3):
            m = await b.next_message()
            pytest.fail(f"redelivered {m}")


async def test_sync_larger_than_a_page_with_live_traffic():
    # 500 sends back to back from one connection: above the default frame rate
    # (200/s, burst 400) now that each send is answered within a millisecond or two.
    base = node_config()
    limits = dataclasses.replace(base.limits, rate_per_connection=5000.0, burst_per_connection=5000)
    async with timpy.open_node(base.replace(limits=limits)) as node:
        await users(node.tcp_url, "alice", "bob")
        total = 0
        async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
            for i in range(450):  # more than two sync pages
                await a.send("bob", f"m{i}")
            total = 450
            async with timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
                for i in range(450, 500):  # sent while bob syncs
                    await a.send("bob", f"m{i}")
                total = 500
                got = [await b.next_message(timeout=10) for _ in range(total)]
    assert [m.seq for m in got] == list(range(1, total + 1))


async def test_other_terminals_of_sender_and_recipient_get_it(node):
    await users(node.tcp_url, "alice", "bob")
    async with (
        timpy.connect(node.tcp_url, "alice", PASSWORD, device="phone") as a1,
        timpy.connect(node.tcp_url, "alice", PASSWORD, device="laptop") as a2,
        timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as b1,
        timpy.connect(node.tcp_url, "bob", PASSWORD, device="laptop") as b2,
    ):
        await a1.send("bob", "to all")
        for c in (a2, b1, b2):
            assert (await c.next_message(timeout=5)).body == b"to all"
        with trio.move_on_after(0.3):
            echo = await a1.next_message()  # the sending terminal itself: no echo
            pytest.fail(f"echoed {echo}")


async def test_same_device_logging_in_again_replaces_the_old_connection(node):
    await users(node.tcp_url, "alice")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="phone") as old:
        async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="phone"):
            with trio.fail_after(5):
                while old.closed_reason is None:
                    await trio.sleep(0.02)
    assert "same device" in old.closed_reason


async def test_token_login_and_logout_revokes(node):
    await users(node.tcp_url, "alice")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
        token = a.token
    with pytest.raises(RemoteError) as e:
        async with timpy.connect(node.ws_url, token=token, device="someone-elses"):
            pass
    assert e.value.code == Code.BAD_REQUEST
    async with timpy.connect(node.ws_url, token=token) as t:
        assert t.user == "alice"
        await t.logout()
        with pytest.raises(RemoteError) as e:
            await t.send("alice", "x")
        assert e.value.code == Code.AUTH_REQUIRED
    with pytest.raises(RemoteError) as e:
        async with timpy.connect(node.tcp_url, token=token):
            pass
    assert e.value.code == Code.TOKEN_INVALID


async def test_token_from_one_node_works_on_another_with_the_same_key():
    from timpy.crypto.keys import ClusterKeys

    keys = ClusterKeys.generate()
    async with timpy.open_node(node_config(), keys=keys) as n1, timpy.open_node(node_config(), keys=keys) as n2:
        await users(n1.tcp_url, "alice")
        async with timpy.connect(n1.tcp_url, "alice", PASSWORD) as a:
            token = a.token
        async with timpy.connect(n2.tcp_url, token=token) as b:  # verified by its signature (the account is not on this node)
            assert b.user == "alice"


async def test_errors_are_clear(node):
    await users(node.tcp_url, "alice")
    with pytest.raises(RemoteError) as e:
        await timpy.register(node.tcp_url, "ALICE", PASSWORD)  # names fold case
    assert e.value.code == Code.USER_EXISTS
    with pytest.raises(RemoteError) as e:
        await timpy.register(node.tcp_url, "bad name", PASSWORD)
    assert e.value.code == Code.INVALID_NAME
    with pytest.raises(RemoteError) as e:
        await timpy.register(node.tcp_url, "carol", "short")
    assert e.value.code == Code.WEAK_PASSWORD
    for name, pw in (("alice", "wrong-password"), ("nobody", PASSWORD)):
        with pytest.raises(RemoteError) as e:
            async with timpy.connect(node.tcp_url, name, pw):
                pass
        assert e.value.code == Code.BAD_CREDENTIALS
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
        with pytest.raises(RemoteError) as e:
            await a.send("nobody", "x")
        assert e.value.code == Code.NO_SUCH_USER
        with pytest.raises(RemoteError) as e:
            await a.send("alice", b"x" * (node.config.limits.max_body + 1))
        assert e.value.code == Code.BODY_TOO_LARGE
        with pytest.raises(RemoteError) as e:
            await a.send("alice", "x", kind=7)
        assert e.value.code == Code.INVALID_MESSAGE
        with pytest.raises(RemoteError) as e:
            await a.history(conversation="00" * 16)
        assert e.value.code == Code.NOT_A_MEMBER
        assert (await a.history("alice")).messages == []  # nothing stored by the failures


async def test_custom_kind_and_extension_data(node):
    await users(node.tcp_url, "alice", "bob")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
        await a.send("bob", b"\x00\x01", kind=150, ext={"mime": "application/x-game"})
        m = await b.next_message(timeout=5)
        assert (m.kind, m.body, m.ext) == (150, b"\x00\x01", {"mime": "application/x-game"})


async def test_one_bad_send_in_a_group_commit_does_not_fail_the_others(node):
    """Sends that share a write batch are isolated: a request error in one
    (here a recipient that vanished after the check) fails only that one."""
    from timpy.im import ids
    from timpy.im.accounts import Identity

    await users(node.tcp_url, "alice", "bob")
    alice = Identity(ids.user_id(node.indexer, "alice"), "alice")
    from timpy.im.writer import Append

    ghost = Append(*node.messenger._prepare(alice, "ghost", "id-1", 0, b"x", {}))
    good = Append(*node.messenger._prepare(alice, "bob", "id-2", 0, b"x", {}))
    await node.writer._write([ghost, good])  # one batch, as the writer would take it
    assert good.error is None and good.result.message.seq == 1
    assert ghost.result is None and ghost.error.code == Code.NO_SUCH_USER
    assert [m.seq for m in (await node.messenger.history(alice, "", "bob", 0, None, 10))[1]] == [1]


async def test_recipients_remembered_to_exist_are_bounded_and_looked_up_again(node, monkeypatch):
    from timpy.im import messaging

    monkeypatch.setattr(messaging, "KNOWN_USERS_KEPT", 2)
    await users(node.tcp_url, "alice", "bob", "carol", "dave")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
        for to in ("bob", "carol", "dave", "bob", "carol"):
            await a.send(to, f"to {to}")
            assert len(node.messenger._known_users) <= 2
        with pytest.raises(RemoteError) as err:
            await a.send("nobody", "lost")
        assert err.value.code == Code.NO_SUCH_USER
        for to in ("bob", "carol", "dave"):
            assert [m.body for m in (await a.history(to)).messages][-1] == f"to {to}".encode()


async def test_first_sends_to_many_new_recipients_look_them_up_together(node, monkeypatch):
    """A flood's first messages each ask whether their recipient exists: the
    lookups that wait together (from many connections) share a storage
    call, and each still gets its own answer (a missing user fails only its
    own send)."""
    from contextlib import AsyncExitStack

    names = [f"r{i}" for i in range(30)]
    await users(node.tcp_url, *names)
    repo = node.store.repo
    calls: list[int] = []
    real = repo.existing_accounts

    def counted(user_ids):
        calls.append(len(user_ids))
        return real(user_ids)

    monkeypatch.setattr(repo, "existing_accounts", counted)
    plan = [(name, names[(i + 1) % len(names)]) for i, name in enumerate(names)] + [(names[0], "nobody")]
    outcomes: dict[tuple[str, str], object] = {}
    async with AsyncExitStack() as stack:
        conns = {name: await stack.enter_async_context(timpy.connect(node.tcp_url, name, PASSWORD)) for name in names}

        async def send(sender: str, to: str) -> None:
            try:
                outcomes[(sender, to)] = (await conns[sender].send(to, f"to {to}")).seq
            except RemoteError as exc:
                outcomes[(sender, to)] = exc.code

        async with trio.open_nursery() as nursery:
            for sender, to in plan:
                nursery.start_soon(send, sender, to)
    assert outcomes == {**{p: 1 for p in plan[:-1]}, plan[-1]: Code.NO_SUCH_USER}
    assert sum(calls) == len(names) + 1  # each recipient looked up once
    assert len(calls) < len(names) // 2, calls  # in a few storage calls, not one each
