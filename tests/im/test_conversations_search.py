"""The conversation list and search, through the client library: on one node
over TCP and across the three nodes of an in-memory cluster (users spread
over them), after a restart of the nodes, and in the SQLite file at rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD, node_config, users
from tests.support.clients import clients, code_of
from timpy.client import Connector
from timpy.config import NodeConfig
from timpy.im.conversations import NOTICE_PAUSE_MAX
from timpy.testing import open_cluster

WHERE = pytest.mark.parametrize("where", ["one", "three"])


@pytest.fixture
def clock(where: str) -> trio.testing.MockClock | None:
    """Virtual time for the in-memory cluster; real time for the node that listens on a socket."""
    return trio.testing.MockClock(autojump_threshold=0) if where == "three" else None


@asynccontextmanager
async def place(where: str) -> AsyncIterator[list[str | Connector]]:
    """One node over TCP (its URL three times), or the three nodes of an in-memory cluster."""
    if where == "one":
        async with timpy.open_node(node_config()) as n:
            yield [n.tcp_url] * 3
        return
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY)) as cluster:
        yield [cluster.connector(i) for i in range(3)]


async def settle() -> None:
    """Background work (group records, notices, indexing) has run."""
    await trio.sleep(0.3)


def summary(page: timpy.ConversationPage) -> list[tuple]:
    return [
        (e.conversation, e.group, e.peer, e.name, e.last.body if e.last else None, e.unread, e.mentions,
         e.muted, e.pinned, e.archived)
        for e in page.entries
    ]


@WHERE
async def test_the_conversation_list_orders_counts_flags_and_pushes(where, clock):
    async with place(where) as at, clients(at, "pat", "quin", "rae") as (pat, quin, rae):
        a = await pat.send("quin", "first")
        await pat.send("quin", "second")
        await quin.send("pat", "my reply")
        await trio.sleep(0.01)
        g = await rae.create_group("lunch club", ["pat", "quin"], policy="invite")
        await settle()
        # "My groups": the new group is listed before it has a message, newest first.
        page = await quin.conversations()
        assert summary(page) == [
            (g.group, True, "", "lunch club", None, 0, 0, False, False, False),
            (a.conversation, False, "pat", "", b"my reply", 2, 0, False, False, False),
        ]
        assert (page.total, page.more) == (2, False)
        # A message mentioning quin: pushed to quin's terminals as a changed entry.
        await rae.send_group(g.group, "@quin lunch at noon?", ext={"mentions": "quin"})
        e = await quin.next_notice(timpy.ConversationEntry, timeout=10)
        while e.conversation != g.group or e.unread != 1:
            e = await quin.next_notice(timpy.ConversationEntry, timeout=10)
        assert (e.last.body, e.mentions, e.group, e.name) == (b"@quin lunch at noon?", 1, True, "lunch club")
        await rae.send_group(g.group, "everyone!", ext={"mentions": "@all"})
        await settle()
        assert [(x.unread, x.mentions) for x in (await pat.conversations()).entries if x.group] == [(2, 1)]
        # Flags: pinned first; archived apart; muted shown.
        pinned = await quin.set_conversation(a.conversation, pinned=True, muted=True)
        assert (pinned.pinned, pinned.muted, pinned.archived, pinned.peer) == (True, True, False, "pat")
        assert [x.conversation for x in (await quin.conversations()).entries] == [a.conversation, g.group]
        await quin.set_conversation(g.group, archived=True)
        assert [x.conversation for x in (await quin.conversations()).entries] == [a.conversation]
        archived = await quin.conversations(archived=True)
        assert [(x.conversation, x.archived) for x in archived.entries] == [(g.group, True)]
        # Reading moves the count, told live.
        await quin.receipt(a.conversation, a.seq + 1)
        e = await quin.next_notice(timpy.ConversationEntry, timeout=10)
        while e.conversation != a.conversation or e.unread != 0:
            e = await quin.next_notice(timpy.ConversationEntry, timeout=10)
        assert e.read_seq == a.seq + 1
        # Paging.
        await quin.set_conversation(g.group, archived=False)
        first = await quin.conversations(limit=1)
        second = await quin.conversations(offset=1, limit=1)
        assert (first.total, first.more, second.more) == (2, True, False)
        assert [x.conversation for x in first.entries + second.entries] == [a.conversation, g.group]
        # A user who leaves a group no longer lists it.
        await pat.group("leave", g.group)
        await settle()
        assert g.group not in [x.conversation for x in (await pat.conversations()).entries]
        assert await code_of(quin.set_conversation("zz", pinned=True)) == timpy.Code.BAD_REQUEST
        assert await code_of(pat.set_conversation(g.group, pinned=True)) == timpy.Code.NOT_A_MEMBER  # left it


@WHERE
async def test_two_devices_see_the_same_list(where, clock):
    async with place(where) as at, clients(at, "sam", "tea") as (sam, tea):
        for i in range(3):
            await sam.send("tea", f"m{i}")
        await tea.set_conversation((await tea.conversations()).entries[0].conversation, pinned=True)
        async with timpy.connect(at[2], "tea", PASSWORD, device="phone") as phone:
            await phone.wait_synced()
            assert summary(await phone.conversations()) == summary(await tea.conversations())
            # A flag set on one device is pushed to the other.
            conv = (await phone.conversations()).entries[0].conversation
            await phone.set_conversation(conv, muted=True)
            e = await tea.next_notice(timpy.ConversationEntry, timeout=10)
            while not e.muted:
                e = await tea.next_notice(timpy.ConversationEntry, timeout=10)
            assert summary(await phone.conversations()) == summary(await tea.conversations())


@WHERE
async def test_search_finds_words_and_follows_edit_recall_and_burn(where, clock):
    async with place(where) as at, clients(at, "uma", "vic", "wes") as (uma, vic, wes):
        a1 = await uma.send("vic", "Meet me at the Harbour at nine")
        a2 = await uma.send("vic", "harbourmaster says the ferry is late")
        a3 = await vic.send("uma", "ok, café at the harbour then")
        await uma.send("wes", "harbour plans for wes only")
        r = await vic.search("harbour")
        assert [(h.conversation, h.seq) for h in r.hits] == [(a1.conversation, a3.seq), (a1.conversation, a2.seq),
                                                              (a1.conversation, a1.seq)]
        assert r.count == 3 and not r.more
        assert [h.seq for h in (await vic.search("CAFE")).hits] == []  # accents are kept: café is not cafe
        assert [h.seq for h in (await vic.search("Café harb")).hits] == [a3.seq]
        assert [h.seq for h in (await vic.search("harbourmaster")).hits] == [a2.seq]  # a long word: whole
        assert [h.seq for h in (await vic.search("harbourm")).hits] == [a2.seq]  # up to 8 letters: a prefix
        page = await vic.search("harbour", limit=2)
        assert (len(page.hits), page.count, page.more) == (2, 3, True)
        # Edit: the old words leave the index, the new ones come in.
        await uma.edit(a1.seq, "Meet me at the station at nine", to="vic")
        assert [h.seq for h in (await vic.search("harbour")).hits] == [a3.seq, a2.seq]
        assert [h.seq for h in (await vic.search("station")).hits] == [a1.seq]
        # Recall: gone from the results.
        await uma.recall(a2.seq, to="vic")
        assert [h.seq for h in (await vic.search("harbour")).hits] == [a3.seq]
        # Burn after reading: never indexed, and burned for good.
        b = await uma.send("vic", "secret harbour code", kind=timpy.KIND_BURN)
        assert [h.seq for h in (await vic.search("secret")).hits] == []
        await vic.receipt(b.conversation, b.seq)
        assert [h.seq for h in (await vic.search("secret")).hits] == []
        # Only conversations the user is in.
        assert [h.conversation for h in (await wes.search("harbour")).hits] != [] and all(
            h.conversation != a1.conversation for h in (await wes.search("harbour")).hits)
        assert await code_of(wes.search("harbour", conversation=a1.conversation)) == timpy.Code.NOT_A_MEMBER
        assert await code_of(vic.search("  ,;  ")) == timpy.Code.BAD_REQUEST
        # Groups too.
        g = await uma.create_group("ships", ["vic", "wes"], policy="invite")
        ga = await wes.send_group(g.group, "The harbour pilot boards at dawn")
        assert (await vic.search("pilot")).hits[0].conversation == g.group
        assert [h.seq for h in (await vic.search("harbour", conversation=g.group)).hits] == [ga.seq]


@pytest.mark.trio
async def test_no_search_word_is_in_the_sqlite_file(tmp_path):
    words = ["zanzibarian", "quokkaberry", "flibbertigibbet"]
    config = node_config(memory=False, data_dir=tmp_path)
    async with timpy.open_node(config) as node:
        await users(node.tcp_url, "xia", "yul")
        async with timpy.connect(node.tcp_url, "xia", PASSWORD) as xia, \
                timpy.connect(node.tcp_url, "yul", PASSWORD) as yul:
            for w in words:
                await xia.send("yul", f"the word is {w} today")
            assert [len((await yul.search(w[:6])).hits) for w in words] == [1, 1, 1]
            postings, heads = await node.store.run(node.store.repo.search_size)
            assert postings > 0 and heads == 1
    dump = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for w in words:
        for form in (w, w[:6], w.upper()):
            assert form.encode() not in dump and form.encode("utf-16-le") not in dump


async def test_list_and_search_survive_restarts_across_nodes(tmp_path, autojump_clock):
    config = NodeConfig(security=FAST_SECURITY)
    async with open_cluster(3, config=config, data_dir=tmp_path, seed=5) as cluster:
        for i, name in enumerate(("ann", "bea", "cal")):
            await cluster.register(i, name, PASSWORD)
        async with cluster.client(0, "ann", PASSWORD) as ann, cluster.client(1, "bea", PASSWORD) as bea:
            for i in range(4):
                await ann.send("bea", f"voyage {i} to the lighthouse")
            g = await bea.create_group("crew", ["ann", "cal"], policy="invite")
            await bea.send_group(g.group, "lighthouse keepers meet tonight")
            await bea.set_conversation(g.group, pinned=True)
            await trio.sleep(1)
            before = summary(await bea.conversations())
            found = [(h.conversation, h.seq) for h in (await bea.search("lighthouse")).hits]
            assert len(before) == 2 and len(found) == 5
        for i in range(3):  # every node, so every owner, restarts in turn
            await cluster.restart(i)
            await cluster.wait_converged()
            await trio.sleep(5)
            async with cluster.client((i + 1) % 3, "bea", PASSWORD) as bea:
                assert summary(await bea.conversations()) == before
                assert [(h.conversation, h.seq) for h in (await bea.search("lighthouse")).hits] == found


@pytest.mark.trio
async def test_list_and_search_in_shared_backend_mode_and_after_a_backend_is_added(tmp_path):
    from sqlalchemy import select

    from tests.store.backends import fresh_database
    from timpy.config import ClusterConfig, StorageConfig
    from timpy.store import schema
    from timpy.store.backends import BackendSpec, backend_ring

    b1, b2, b3 = (BackendSpec(f"b{i}", fresh_database("sqlite", f"cs{i}", tmp_path)) for i in (1, 2, 3))
    config = node_config(memory=False, data_dir=tmp_path / "node", cluster=ClusterConfig(listen=None),
                         storage=StorageConfig(backends=(b1, b2)))
    later = backend_ring((b1, b2, b3))  # where keys will be once b3 is added
    async with timpy.open_node(config) as node:
        names = [f"u{i}" for i in range(40)]
        await users(node.tcp_url, *names)
        async with timpy.connect(node.tcp_url, "u0", PASSWORD) as u0:
            # Talk to at least seven peers, and on until a conversation will move to b3: conversation ids
            # come from this node's own key, so which ones move differs from run to run.
            sent = 0
            moving = False
            for peer in names[1:]:
                a = await u0.send(peer, f"pelican number {peer}")
                sent += 1
                moving = moving or later.owner(bytes.fromhex(a.conversation)) == "b3"
                if sent >= 7 and moving:
                    break
            assert moving, "no conversation of 39 places on the added backend"
            g = await u0.create_group("birds", names[1:4], policy="invite")
            await u0.send_group(g.group, "pelican flock overhead")
            await u0.set_conversation(g.group, pinned=True)
            await settle()
            before = summary(await u0.conversations())
            found = sorted((h.conversation, h.seq) for h in (await u0.search("pelican")).hits)
            assert len(before) == sent + 1 and before[0][0] == g.group and len(found) == sent + 1
            assert node.backends is not None
            await node.backends.add("b3", b3.url)
            status = await node.backends.wait_moved(60)
            assert status["move"] is None and status["progress"]["keys_moving"] > 0
            assert summary(await u0.conversations()) == before
            assert sorted((h.conversation, h.seq) for h in (await u0.search("pelican")).hits) == found
            a = await u0.send("u1", "a second pelican")
            assert [(h.conversation, h.seq) for h in (await u0.search("second pel")).hits] == [(a.conversation, a.seq)]
            # The index moved with its conversations: no backend keeps tokens of a conversation placed elsewhere.
            repo = node.store.repo
            for name in ("b1", "b2", "b3"):
                with repo.backend(name).engine.connect() as conn:
                    held = {bytes(r[0]) for r in conn.execute(select(schema.search_postings.c.conv_id).distinct())}
                assert all(repo.map.place(c) == name for c in held)
                if name == "b3":
                    assert held  # some indexed conversations moved there, and were indexed there


@WHERE
async def test_replies_and_mentions(where, clock):
    async with place(where) as at, clients(at, "amy", "ben", "cy") as (amy, ben, cy):
        q = await amy.send("ben", "pizza or sushi?")
        r = await ben.send("amy", "sushi", reply_to=q.seq)
        got = await amy.next_message(timeout=10)
        while got.seq != r.seq:
            got = await amy.next_message(timeout=10)
        assert got.ext["reply_to"] == str(q.seq)
        quoted = await amy.replied_to(got)
        assert quoted is not None and (quoted.seq, quoted.body) == (q.seq, b"pizza or sushi?")
        assert await amy.replied_to(quoted) is None  # not a reply
        assert await code_of(ben.send("amy", "?", reply_to=999)) == timpy.Code.NO_SUCH_MESSAGE
        assert await code_of(ben.send("amy", "?", ext={"reply_to": "first"})) == timpy.Code.INVALID_MESSAGE
        await amy.recall(q.seq, to="ben")
        assert await code_of(ben.send("amy", "late answer", reply_to=q.seq)) == timpy.Code.NO_SUCH_MESSAGE
        assert await amy.replied_to(got) is None  # its target is gone
        # Groups: @all for the owner and admins; names must be members.
        g = await amy.create_group("dinner", ["ben", "cy"], policy="invite")
        assert await code_of(ben.send_group(g.group, "hey all", mentions=["@all"])) == timpy.Code.NOT_ALLOWED
        assert await code_of(ben.send_group(g.group, "hey dan", mentions=["dan"])) == timpy.Code.NOT_A_MEMBER
        await amy.send_group(g.group, "table at 8", mentions=["@all"])
        await ben.send_group(g.group, "cy, coming?", mentions=["cy"], reply_to=1)
        await amy.group("set_profile", g.group, profile={"mention_all": "members"})
        await ben.send_group(g.group, "see you all", mentions=["@all"])
        await settle()
        entry = next(e for e in (await cy.conversations()).entries if e.conversation == g.group)
        assert (entry.unread, entry.mentions) == (3, 3)
        entry = next(e for e in (await ben.conversations()).entries if e.conversation == g.group)
        assert (entry.unread, entry.mentions) == (1, 1)  # amy's @all; ben's own messages do not count


@pytest.mark.trio
async def test_a_browser_speaking_json_gets_the_list_pushes_and_search():
    import json

    import trio_websocket

    async with timpy.open_node(node_config()) as node:
        await users(node.tcp_url, "web", "pal")
        async with trio_websocket.open_websocket_url(node.ws_url) as ws, \
                timpy.connect(node.tcp_url, "pal", PASSWORD) as pal:
            async def call(obj: dict, want: str) -> dict:
                if obj:
                    await ws.send_message(json.dumps(obj))
                while True:
                    frame = json.loads(await ws.get_message())
                    if want in frame:
                        return frame[want]

            await call({"rid": 1, "hello": {"version": 1, "agent": "browser"}}, "welcome")
            await call({"rid": 2, "login": {"name": "web", "password": PASSWORD, "device": "b"}}, "login_ok")
            await pal.send("web", "hello from the other side", ext={"mentions": "web"})
            pushed = await call({}, "conversation_entry")
            assert (pushed["peer"], pushed["unread"], pushed["mentions"]) == ("pal", 1, 1)
            page = await call({"rid": 3, "conversation_list": {"limit": 10}}, "conversation_page")
            assert [(e["peer"], e["last"]["body"]) for e in page["entries"]] == [("pal", "aGVsbG8gZnJvbSB0aGUgb3RoZXIgc2lkZQ==")]
            found = await call({"rid": 4, "search": {"query": "OTHER"}}, "search_results")
            assert (found["count"], found["hits"][0]["seq"]) == (1, 1)


@WHERE
async def test_threads_have_their_own_sequence_and_a_count_on_the_root(where, clock):
    async with place(where) as at, clients(at, "dee", "eli", "fay") as (dee, eli, fay):
        root = await dee.send("eli", "plan for the trip?")
        t1 = await eli.send("dee", "day one: hike", thread=root.seq)
        t2 = await dee.send("eli", "day two: lake", thread=root.seq)
        assert t1.conversation == t2.conversation != root.conversation and (t1.seq, t2.seq) == (1, 2)
        got = await dee.next_message(timeout=10)
        while got.conversation != t1.conversation:
            got = await dee.next_message(timeout=10)
        assert got.ext["thread_of"] == root.conversation and got.ext["thread"] == str(root.seq)
        seen: set[str] = set()  # list notices name the parent, never the thread
        with trio.move_on_after(1):
            while True:
                seen.add((await dee.next_notice(timpy.ConversationEntry)).conversation)
        assert seen == {root.conversation}
        page = await eli.history(conversation=t1.conversation)
        assert [m.body for m in page.messages] == [b"day one: hike", b"day two: lake"]
        # Recall and edit inside a thread act on the thread's messages.
        await dee.edit(t2.seq, "day two: lake and boat", to="eli", thread=root.seq)
        t3 = await eli.send("dee", "typo", thread=root.seq)
        await eli.recall(t3.seq, to="dee", thread=root.seq)
        page = await eli.history(conversation=t1.conversation)
        assert [m.body for m in page.messages] == [b"day one: hike", b"day two: lake and boat"]
        other = await dee.send("eli", "unrelated")
        infos = await dee.threads([root.seq, other.seq], peer="eli")
        assert [(i.root, i.thread, i.count) for i in infos] == [(root.seq, t1.conversation, 5), (other.seq, infos[1].thread, 0)]
        # Threads are not entries of their own: their activity counts for the parent; search finds them.
        await settle()
        listed = (await eli.conversations()).entries
        assert [e.conversation for e in listed] == [root.conversation]
        assert [(h.conversation, h.seq) for h in (await eli.search("boat")).hits] == [(t1.conversation, 2)]
        # Only the parent's members; the root must be there.
        assert await code_of(fay.threads([root.seq], peer="dee")) == timpy.Code.NOT_A_MEMBER
        assert await code_of(dee.send("eli", "?", thread=999)) == timpy.Code.NO_SUCH_MESSAGE
        assert await code_of(dee.send("eli", "?", thread=root.seq, kind=timpy.KIND_BURN)) == timpy.Code.BAD_REQUEST
        await dee.recall(other.seq, to="eli")
        assert await code_of(dee.send("eli", "?", thread=other.seq)) == timpy.Code.NO_SUCH_MESSAGE
        # In a group: its rules apply (a muted member cannot write in its threads either).
        g = await dee.create_group("trip", ["eli", "fay"], policy="invite")
        groot = await dee.send_group(g.group, "who drives?")
        await fay.send_group(g.group, "me", thread=groot.seq)
        await dee.group("mute", g.group, users=["fay"], flag=True)
        assert await code_of(fay.send_group(g.group, "me again", thread=groot.seq)) == timpy.Code.MUTED
        assert [i.count for i in await eli.threads([groot.seq], group=g.group)] == [1]


async def test_list_and_search_after_the_users_owner_dies_and_the_ring_moves(autojump_clock):
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY), seed=11) as cluster:
        for name in ("gil", "hua", "ian"):
            await cluster.register(0, name, PASSWORD)
        owner = cluster.node_ids.index(cluster.nodes[0].peers.owner(cluster.nodes[0].user_id_of("hua")))
        alive = [i for i in range(3) if i != owner]
        async with cluster.client(alive[0], "gil", PASSWORD) as gil, cluster.client(alive[1], "hua", PASSWORD) as hua:
            for i in range(3):
                await gil.send("hua", f"comet sighting {i}")
            g = await gil.create_group("sky", ["hua", "ian"], policy="invite")
            await gil.send_group(g.group, "comet tonight", mentions=["hua"])
            await settle()
            await hua.set_conversation(g.group, pinned=True)
            before = summary(await hua.conversations())
            found = sorted((h.conversation, h.seq) for h in (await hua.search("comet")).hits)
            assert len(before) == 2 and len(found) == 4 and before[0][6] == 1  # one mention
        await cluster.kill(owner)
        await trio.sleep(20)  # the others declare it dead; its keys move to the next replicas
        await cluster.wait_converged()
        assert all(len(cluster.nodes[i].peers.placement.members) == 2 for i in alive)
        async with cluster.client(alive[0], "hua", PASSWORD) as hua:
            assert summary(await hua.conversations()) == before
            assert sorted((h.conversation, h.seq) for h in (await hua.search("comet")).hits) == found


@WHERE
async def test_a_member_who_joins_later_reads_earlier_threads_and_files_and_one_who_left_does_not(where, clock):
    """Threads and files follow the rule group history follows: whoever is in
    the group now reads all of it, earlier threads and files included; one
    who left reads none of it; and a client's ``thread_of`` in a plain message
    opens nothing (the thread's id must be the one its parent and root give)."""
    async with place(where) as at, clients(at, "hal", "ivy", "jon", "kim") as (hal, ivy, jon, kim):
        g = await hal.create_group("early", ["ivy"], policy="invite")
        root = await hal.send_group(g.group, "plans?")
        reply = await ivy.send_group(g.group, "in the thread", thread=root.seq)
        photo = await hal.upload(b"an earlier photo" * 50, name="early.png")
        await hal.send_file(photo, group=g.group)
        in_thread = await hal.upload(b"a file in the thread" * 50, name="thread.txt")
        await hal.send_file(in_thread, group=g.group, thread=root.seq)
        # jon is not in the group: nothing of it.
        assert await code_of(jon.history(conversation=reply.conversation)) == timpy.Code.NOT_A_MEMBER
        assert await code_of(jon.download(photo.id)) == timpy.Code.NOT_ALLOWED
        assert await code_of(jon.download(in_thread.id)) == timpy.Code.NOT_ALLOWED
        await hal.group("invite", g.group, users=["jon"])
        # Now jon reads the group's history, its earlier thread and files.
        assert [m.body for m in (await jon.history(conversation=g.group)).messages][0] == b"plans?"
        thread = await jon.history(conversation=reply.conversation)
        assert [m.body for m in thread.messages][0] == b"in the thread" and len(thread.messages) == 2
        assert await jon.download(photo.id) == b"an earlier photo" * 50
        assert await jon.download(in_thread.id) == b"a file in the thread" * 50
        # ivy leaves: the thread is closed to her as the group is.
        await ivy.group("leave", g.group)
        assert await code_of(ivy.history(conversation=g.group)) == timpy.Code.NOT_A_MEMBER
        assert await code_of(ivy.history(conversation=reply.conversation)) == timpy.Code.NOT_A_MEMBER
        # A plain 1:1 message claiming to be in the group's thread opens the 1:1 conversation to no one else.
        fake = await kim.send("hal", "private", ext={"thread_of": g.group})
        assert await code_of(jon.history(conversation=fake.conversation)) == timpy.Code.NOT_A_MEMBER
        assert [m.body for m in (await hal.history("kim")).messages] == [b"private"]


async def _notices_reach(client: timpy.Client, listed: timpy.ConversationEntry, quiet: float) -> None:
    """The newest live notice of ``listed``'s conversation queued for
    ``client`` has the counts the list read. Notices come in coalesced rounds
    paced by the node (a pause of up to ``NOTICE_PAUSE_MAX`` between rounds),
    and an earlier notice may have had the same counts: the wait ends when
    the newest one agrees and ``quiet`` seconds bring no other."""
    want = (listed.unread, listed.mentions)
    seen: list[tuple[int, int]] = []
    with trio.fail_after(30):
        while True:
            try:
                e = await client.next_notice(timpy.ConversationEntry, timeout=quiet if seen[-1:] == [want] else 10)
            except trio.TooSlowError:
                assert seen[-1:] == [want], seen
                return
            if e.conversation == listed.conversation:
                seen.append((e.unread, e.mentions))


@WHERE
async def test_live_unread_counts_agree_with_the_lists_after_every_round(where, clock):
    """After own messages, mentions, a recall of an unread message, a read
    mark moved and many rounds, the newest live notice of an entry has the
    counts the list reads (a guard for any way of counting notices faster)."""
    async with place(where) as at, clients(at, "sam", "tia") as (sam, tia):
        sent = []
        for round_ in range(8):
            for k in range(5):
                ext = {"mentions": "tia"} if k == 1 else None
                sent.append(await sam.send("tia", f"r{round_} m{k}", ext=ext) if ext else await sam.send(
                    "tia", f"r{round_} m{k}"))
            await tia.send("sam", f"reply {round_}")  # the reader's own messages count for nothing
            if round_ == 3:
                await sam.recall(sent[-2].seq, to="tia")  # an unread message taken back
            if round_ == 5:
                await tia.receipt(sent[-3].conversation, sent[-3].seq)  # read up to there
            await settle()
            listed = next(e for e in (await tia.conversations()).entries if e.conversation == sent[0].conversation)
            await _notices_reach(tia, listed, NOTICE_PAUSE_MAX + 0.5 if round_ == 7 else 0.3)
        assert listed.unread == 2 + 2 * 5  # after the mark: round 5's last two, then rounds 6 and 7
