"""Roster, presence, message kinds, receipts, rooms and streams, terminal
limits, profiles and per-user limits, through the client library: each on
one node over TCP, and across the three nodes of an in-memory cluster
(``timpy.testing``, under the mock clock) with users spread over them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD, node_config, users
from tests.support.clients import clients, code_of
from timpy.client import Connector
from timpy.config import Limits, NodeConfig
from timpy.testing import open_cluster


@asynccontextmanager
async def place_with_nodes(where: str, **limits: object) -> AsyncIterator[tuple[list[str | Connector], list[timpy.Node]]]:
    """Where to connect users, and the nodes behind: one node over TCP (the same URL
    three times), or three nodes of an in-memory cluster (timpy.testing) under the mock clock."""
    if where == "one":
        async with timpy.open_node(node_config(limits=Limits(**limits))) as n:
            yield [n.tcp_url] * 3, [n]
        return
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, limits=Limits(**limits))) as cluster:
        yield [cluster.connector(i) for i in range(3)], cluster.nodes


@asynccontextmanager
async def place(where: str, **limits: object) -> AsyncIterator[list[str | Connector]]:
    async with place_with_nodes(where, **limits) as (at, _):
        yield at


WHERE = pytest.mark.parametrize("where", ["one", "three"])


@pytest.fixture
def clock(where: str) -> trio.testing.MockClock | None:
    """Virtual time for the in-memory cluster; real time for the node that listens on a socket."""
    return trio.testing.MockClock(autojump_threshold=0) if where == "three" else None


@WHERE
async def test_roster_requests_friends_and_blocks(where, clock):
    async with place(where) as at, clients(at, "ann", "ben", "cy") as (ann, ben, cy):
        r = await ann.add_friend("ben")
        assert r.outgoing == ["ben"] and r.friends == []
        await _until(ben, timpy.Roster, lambda r: r.incoming == ["ann"])
        r = await ben.accept_friend("ann")
        assert r.friends == ["ann"] and r.incoming == []
        await _until(ann, timpy.Roster, lambda r: r.friends == ["ben"])
        assert (await ann.roster()).friends == ["ben"]
        # Crossing requests make friends at once; reject and remove.
        await ann.add_friend("cy")
        r = await cy.roster("reject", "ann")
        assert r.incoming == [] and (await ann.roster()).outgoing == []
        assert await code_of(cy.roster("accept", "ann")) == timpy.Code.BAD_REQUEST
        await cy.add_friend("ann")
        assert (await ann.add_friend("cy")).friends == ["ben", "cy"]
        assert (await cy.roster("remove", "ann")).friends == []
        # A block refuses messages, requests and typing signals; unblock restores them.
        await ben.send("cy", "before the block")
        r = await cy.block("ben")
        assert r.blocked == ["ben"]
        assert await code_of(ben.send("cy", "let me in")) == timpy.Code.BLOCKED
        assert await code_of(ben.add_friend("cy")) == timpy.Code.BLOCKED
        assert await code_of(ben.typing(to="cy")) == timpy.Code.BLOCKED
        await cy.send("ben", "cy may still write")  # a block is one-sided
        assert await code_of(cy.add_friend("ben")) == timpy.Code.NOT_ALLOWED
        assert await code_of(ann.roster("fly", "ben")) == timpy.Code.BAD_REQUEST
        assert await code_of(ann.add_friend("nobody-here")) == timpy.Code.NO_SUCH_USER
        assert await code_of(ann.add_friend("ann")) == timpy.Code.BAD_REQUEST
        await cy.roster("unblock", "ben")
        await ben.send("cy", "thanks")
        page = await cy.history("ben")
        assert [m.body for m in page.messages] == [b"before the block", b"cy may still write", b"thanks"]


@WHERE
async def test_presence_status_friends_told_and_queries(where, clock):
    async with place(where) as at:
        await users(at[0], "dee", "eli", "fox")
        async with timpy.connect(at[1], "dee", PASSWORD) as dee, \
                timpy.connect(at[2], "fox", PASSWORD) as fox:
            await dee.add_friend("eli")
            [p] = await fox.presence(["eli"], subscribe=True)
            assert not p.online and p.status == "offline"
            async with timpy.connect(at[0], "eli", PASSWORD) as eli:
                await eli.accept_friend("dee")
                await eli.wait_synced()
                got = await _presence_of(fox, "eli", online=True)
                assert got.status == "online"
                await eli.set_presence("busy", "in a meeting")
                got = await _presence_of(dee, "eli", status="busy")  # a friend, told without asking
                assert got.text == "in a meeting" and got.online
                [p] = await fox.presence(["eli"])
                assert p.status == "busy"
                await eli.set_presence("away", invisible=True)
                got = await _presence_of(dee, "eli", online=False)
                [p] = await dee.presence(["eli"])
                assert not p.online  # invisible looks offline to others
                [p] = await eli.presence(["eli"])
                assert p.online and p.status == "away"  # but not to oneself
                await eli.set_presence("online")
                await _presence_of(dee, "eli", online=True)
                assert await code_of(eli.set_presence("dancing")) == timpy.Code.BAD_REQUEST
            await _presence_of(dee, "eli", online=False)  # the last terminal went
            await fox.presence(["eli"], unsubscribe=True)


async def _until(client: timpy.Client, kind: type, ok) -> object:  # noqa: ANN001
    with trio.fail_after(10):
        while True:
            notice = await client.next_notice(kind)
            if ok(notice):
                return notice


async def _presence_of(client: timpy.Client, user: str, **want: object) -> timpy.Presence:
    with trio.fail_after(10):
        while True:
            p = await client.next_notice(timpy.Presence)
            if p.user == user and all(getattr(p, k) == v for k, v in want.items()):
                return p


@WHERE
async def test_recall_edit_burn_and_custom_kinds(where, clock):
    async with place_with_nodes(where) as (at, nodes), clients(at, "gus", "hal") as (gus, hal):
        a1 = await gus.send("hal", "hello hal")
        a2 = await gus.send("hal", "oops, wrong chat")
        a3 = await gus.send("hal", "this is a typo")
        await gus.send("hal", b"\x01\x02", kind=timpy.KIND_CUSTOM_MIN + 7, ext={"app": "poll", "q": "lunch?"})
        got = [await hal.next_message(timeout=10) for _ in range(4)]
        assert got[3].kind == 107 and got[3].ext == {"app": "poll", "q": "lunch?"} and got[3].body == b"\x01\x02"
        # Recall: the original goes from history; the recipient is told.
        await gus.recall(a2.seq, to="hal")
        notice = await hal.next_message(timeout=10)
        assert notice.kind == timpy.KIND_RECALL and notice.ext["target"] == str(a2.seq)
        # Edit: history shows the new body, marked edited.
        await gus.edit(a3.seq, "this is right", to="hal")
        assert (await hal.next_message(timeout=10)).kind == timpy.KIND_EDIT
        page = await hal.history("gus")
        assert [m.body for m in page.messages] == [b"hello hal", b"this is right", b"\x01\x02"]
        assert "edited" in page.messages[1].ext
        # Only the sender recalls or edits; a bad target is a clear error.
        assert await code_of(hal.recall(a1.seq, to="gus")) == timpy.Code.NOT_ALLOWED
        assert await code_of(hal.edit(a1.seq, "mine now", to="gus")) == timpy.Code.NOT_ALLOWED
        assert await code_of(gus.recall(999, to="hal")) == timpy.Code.NO_SUCH_MESSAGE
        assert await code_of(gus.recall(a2.seq, to="hal")) == timpy.Code.NO_SUCH_MESSAGE  # gone already
        assert await code_of(gus.send("hal", "x", kind=timpy.KIND_RECALL)) == timpy.Code.INVALID_MESSAGE
        assert await code_of(gus.send("hal", "x", kind=timpy.KIND_BURNED, ext={"target": "1"})) == (
            timpy.Code.INVALID_MESSAGE)
        # Burn after reading: gone from storage once hal reads it.
        burn = await gus.send("hal", "self-destructing", kind=timpy.KIND_BURN)
        m = await hal.next_message(timeout=10)
        assert m.kind == timpy.KIND_BURN and m.body == b"self-destructing"
        await hal.receipt(burn.conversation, burn.seq, read=True)
        burned = await gus.next_message(timeout=10)  # gus is told it burned
        assert burned.kind == timpy.KIND_BURNED and burned.ext["target"] == str(burn.seq)
        for c in (gus, hal):
            page = await c.history("hal" if c is gus else "gus")
            assert b"self-destructing" not in [m.body for m in page.messages]
        for n in nodes:
            row = await n.store.run(n.store.repo.get_message, bytes.fromhex(burn.conversation), burn.seq)
            assert row is None or row.deleted  # no copy is left readable on any node
    # The recall window.
    async with place(where, recall_window=0.2) as at, clients(at, "ivy", "jon") as (ivy, jon):
        a = await ivy.send("jon", "too late to take back")
        await trio.sleep(0.5)
        assert await code_of(ivy.recall(a.seq, to="jon")) == timpy.Code.NOT_ALLOWED


@WHERE
async def test_a_recalled_message_is_not_delivered_to_a_terminal_that_was_away(where, clock):
    async with place(where) as at:
        await users(at[0], "kim", "lou")
        async with timpy.connect(at[0], "kim", PASSWORD) as kim:
            a = await kim.send("lou", "meant for nobody")
            await kim.send("lou", "still here")
            await kim.recall(a.seq, to="lou")
        async with timpy.connect(at[2], "lou", PASSWORD) as lou:
            await lou.wait_synced()
            first = await lou.next_message(timeout=10)
            second = await lou.next_message(timeout=10)
            assert first.body == b"still here" and second.kind == timpy.KIND_RECALL
            with pytest.raises(trio.TooSlowError):
                await lou.next_message(timeout=0.3)


@WHERE
async def test_group_recall_by_admin_and_typing_in_a_conversation(where, clock):
    async with place(where) as at, clients(at, "max", "ned", "oli") as (mx, ned, oli):
        g = await mx.create_group("g", ["ned", "oli"], policy="invite")
        a = await ned.send_group(g.group, "spam")
        for c in (mx, oli):
            await c.next_message(timeout=10)
        assert await code_of(oli.recall(a.seq, group=g.group)) == timpy.Code.NOT_ALLOWED
        await mx.recall(a.seq, group=g.group)  # the owner may recall anyone's
        assert (await mx.history(conversation=g.group)).messages == []
        assert await code_of(ned.send_group(g.group, "x", kind=timpy.KIND_BURN)) == timpy.Code.BAD_REQUEST
        await ned.typing(conversation=g.group)
        for c in (mx, oli):
            s = await c.next_notice(timpy.Signal, timeout=10)
            assert s.kind == "typing" and s.sender == "ned" and s.conversation == g.group
        await mx.signal(to="ned", kind="game.move", data=b"e2e4")
        s = await ned.next_notice(timpy.Signal, timeout=10)
        assert (s.kind, s.data, s.to) == ("game.move", b"e2e4", "ned")
        assert await code_of(mx.signal(to="ned", kind="Bad Kind!")) == timpy.Code.BAD_REQUEST


@WHERE
async def test_receipts_and_unread_counts(where, clock):
    async with place(where) as at, clients(at, "pat", "quin", "rae") as (pat, quin, rae):
        acks = [await pat.send("quin", f"q{i}") for i in range(3)]
        await quin.send("pat", "reply")
        g = await rae.create_group("trio", ["pat", "quin"], policy="invite")
        await rae.send_group(g.group, "hi both")
        await trio.sleep(0.2)
        u = await quin.unread()
        assert u.counts == {acks[0].conversation: 3, g.group: 1}  # quin's own reply is not unread
        await quin.receipt(acks[0].conversation, acks[1].seq, read=False)  # delivered: nothing changes
        r = await pat.next_notice(timpy.Receipt, timeout=10)
        assert (r.user, r.seq, r.read) == ("quin", acks[1].seq, False)
        await quin.receipt(acks[0].conversation, acks[2].seq)
        r = await pat.next_notice(timpy.Receipt, timeout=10)
        assert (r.user, r.seq, r.read, r.conversation) == ("quin", acks[2].seq, True, acks[0].conversation)
        u = await quin.unread()
        assert u.counts == {g.group: 1} and u.read[acks[0].conversation] == acks[2].seq
        await quin.receipt(acks[0].conversation, 1)  # marks never move back
        assert (await quin.unread()).read[acks[0].conversation] == acks[2].seq
        await quin.receipt(g.group, 1)
        for c in (pat, rae):
            r = await c.next_notice(timpy.Receipt, timeout=10)
            assert r.conversation == g.group and r.user == "quin"
        assert (await quin.unread()).counts == {}
        assert await code_of(rae.receipt(acks[0].conversation, 1)) == timpy.Code.NOT_A_MEMBER
        assert await code_of(quin.receipt("zz", 1)) == timpy.Code.BAD_REQUEST


@WHERE
async def test_rooms_and_streams(where, clock):
    async with place(where, room_stream_rate=50.0, room_stream_burst=20, max_rooms_per_user=2) as at, \
            clients(at, "sam", "tia", "uma") as (sam, tia, uma):
        assert (await sam.enter_room("arena")).members == ["sam"]
        await tia.enter_room("arena")
        info = await uma.enter_room("arena")
        assert info.members == ["sam", "tia", "uma"]
        for i in range(10):
            await sam.stream("arena", f"frame{i}".encode(), confirm=True)
        for c in (tia, uma):
            got = [await c.next_notice(timpy.StreamData, timeout=10) for _ in range(10)]
            assert [d.data for d in got] == [f"frame{i}".encode() for i in range(10)]
            assert {d.sender for d in got} == {"sam"} and {d.room for d in got} == {"arena"}
        # The per-room rate: a burst past it is refused with a clear code.
        codes = set()
        for _ in range(40):
            try:
                await tia.stream("arena", b"x", confirm=True)
            except timpy.RemoteError as exc:
                codes.add(exc.code)
        assert codes == {timpy.Code.RATE_LIMITED}
        await uma.leave_room("arena")
        assert (await sam.room("members", "arena")).members == ["sam", "tia"]
        assert await code_of(uma.stream("arena", b"x", confirm=True)) == timpy.Code.NOT_A_MEMBER
        # Rooms per user.
        await uma.enter_room("a1")
        await uma.enter_room("a2")
        assert await code_of(uma.enter_room("a3")) == timpy.Code.LIMIT_REACHED
        assert await code_of(uma.enter_room("")) == timpy.Code.BAD_REQUEST
        assert await code_of(uma.room("dance", "a1")) == timpy.Code.BAD_REQUEST
    # A terminal that goes leaves its rooms.
    async with place(where) as at, clients(at, "vic") as (vic,):
        await users(at[0], "wes")
        async with timpy.connect(at[1], "wes", PASSWORD) as wes:
            await wes.enter_room("lobby")
            await vic.enter_room("lobby")
        with trio.fail_after(10):
            while (await vic.room("members", "lobby")).members != ["vic"]:
                await trio.sleep(0.05)


@WHERE
async def test_terminal_limits_per_kind_kick_the_oldest_or_refuse(where, clock):
    async with place(where, max_terminals=3, terminals_per_kind={"mobile": 1}) as at:
        await users(at[0], "xia")
        async with AsyncExitStack() as stack:
            url = at
            phone1 = await stack.enter_async_context(
                timpy.connect(url[0], "xia", PASSWORD, device="phone1", device_kind="mobile"))
            phone2 = await stack.enter_async_context(
                timpy.connect(url[1], "xia", PASSWORD, device="phone2", device_kind="mobile"))
            with trio.fail_after(10):
                while phone1.closed_reason is None:
                    await trio.sleep(0.02)
            assert phone1.closed_code == timpy.Code.KICKED and "oldest" in phone1.closed_reason
            desks = [await stack.enter_async_context(
                timpy.connect(url[i % 3], "xia", PASSWORD, device=f"desk{i}", device_kind="desktop"))
                for i in range(3)]
            with trio.fail_after(10):
                while phone2.closed_reason is None:
                    await trio.sleep(0.02)
            assert phone2.closed_code == timpy.Code.KICKED  # the oldest of 4 > 3
            assert all(d.closed_reason is None for d in desks)
            with pytest.raises(timpy.RemoteError) as bad:
                await stack.enter_async_context(timpy.connect(url[0], "xia", PASSWORD, device_kind="Phone!"))
            assert bad.value.code == timpy.Code.BAD_REQUEST
    async with place(where, max_terminals=1, terminal_overflow="refuse") as at:
        await users(at[0], "yan")
        async with timpy.connect(at[0], "yan", PASSWORD, device="a") as first:
            with pytest.raises(timpy.RemoteError) as refused:
                async with timpy.connect(at[1], "yan", PASSWORD, device="b"):
                    pass
            assert refused.value.code == timpy.Code.LIMIT_REACHED
            await first.ping()
            async with timpy.connect(at[2], "yan", PASSWORD, device="a"):
                pass  # the same device again is not a new terminal


@WHERE
async def test_profiles_and_the_per_user_message_rate(where, clock):
    async with place(where, user_message_rate=5.0, user_message_burst=5) as at, \
            clients(at, "zed", "amy") as (zed, amy):
        p = await zed.set_profile(nickname="Zed", avatar="https://example.invalid/z.png", team="blue")
        assert (p.nickname, p.avatar, p.fields) == ("Zed", "https://example.invalid/z.png", {"team": "blue"})
        p = await amy.profile("zed")
        assert p.user == "zed" and p.nickname == "Zed" and p.fields == {"team": "blue"}
        p = await zed.set_profile(team="")
        assert p.fields == {}
        assert await code_of(zed.set_profile(avatar="javascript:alert(1)")) == timpy.Code.BAD_REQUEST
        assert await code_of(zed.set_profile(nickname="x" * 65)) == timpy.Code.BAD_REQUEST
        assert await code_of(amy.profile("nobody-here")) == timpy.Code.NO_SUCH_USER
        assert (await zed.profile()).nickname == "Zed"  # a refused change changed nothing
        codes = []
        for i in range(12):
            try:
                await zed.send("amy", f"m{i}")
                codes.append(None)
            except timpy.RemoteError as exc:
                codes.append(exc.code)
        assert timpy.Code.RATE_LIMITED in codes and codes[:5] == [None] * 5
