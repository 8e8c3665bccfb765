"""Groups through the client library: on one node, and across three
in-process nodes with members spread over them."""

from __future__ import annotations

import pytest

import timpy
from tests.conftest import PASSWORD, users


async def test_a_group_on_one_node_from_creation_to_dissolution(node):
    url = node.tcp_url
    await users(url, "ann", "ben", "cat", "dan")
    async with (
        timpy.connect(url, "ann", PASSWORD) as ann,
        timpy.connect(url, "ben", PASSWORD) as ben,
        timpy.connect(url, "cat", PASSWORD) as cat,
        timpy.connect(url, "dan", PASSWORD) as dan,
    ):
        g = await ann.create_group("Climbing club", ["ben"])
        assert g.owner == "ann" and g.members == ["ann", "ben"] and g.policy == "approval"
        # Join by request, which an admin approves.
        assert (await cat.group("join", g.group)).members == ["ann", "ben"]
        assert (await ann.group("get", g.group)).requests == ["cat"]
        g = await ann.group("approve", g.group, users=["cat"])
        assert g.members == ["ann", "ben", "cat"]
        # A message is stored once and reaches every member, sender's other terminals included.
        ack = await ben.send_group(g.group, "who is in on saturday?")
        assert ack.seq == 1 and ack.conversation == g.group
        for member in (ann, cat):
            m = await member.next_message(timeout=5)
            assert m.body == b"who is in on saturday?" and m.sender == "ben" and m.conversation == g.group
            assert m.recipient == "#" + g.group
        page = await cat.history(conversation=g.group)
        assert [m.body for m in page.messages] == [b"who is in on saturday?"]
        # Not a member: no sending, no history.
        with pytest.raises(timpy.RemoteError) as refused:
            await dan.send_group(g.group, "hello?")
        assert refused.value.code == timpy.Code.NOT_A_MEMBER
        with pytest.raises(timpy.RemoteError) as hidden:
            await dan.history(conversation=g.group)
        assert hidden.value.code == timpy.Code.NOT_A_MEMBER
        # Roles and mutes.
        with pytest.raises(timpy.RemoteError) as denied:
            await ben.group("kick", g.group, users=["cat"])
        assert denied.value.code == timpy.Code.NOT_ALLOWED
        await ann.group("set_admin", g.group, users=["ben"], flag=True)
        await ben.group("mute", g.group, users=["cat"], flag=True)
        with pytest.raises(timpy.RemoteError) as muted:
            await cat.send_group(g.group, "let me speak")
        assert muted.value.code == timpy.Code.MUTED
        await ann.group("mute_all", g.group, flag=True)
        await ben.send_group(g.group, "admins still speak")  # while the group is muted
        g = await ann.group("rename", g.group, name="Climbing & coffee")
        assert g.name == "Climbing & coffee" and g.admins == ["ben"] and g.all_muted and g.muted == ["cat"]
        # Kick: cat is out, and sees no more of it.
        g = await ben.group("kick", g.group, users=["cat"])
        assert g.members == ["ann", "ben"]
        with pytest.raises(timpy.RemoteError):
            await cat.history(conversation=g.group)
        # Ownership moves; the old owner is an admin; then the new owner dissolves it.
        g = await ann.group("transfer", g.group, users=["ben"])
        assert g.owner == "ben" and g.admins == ["ann"]
        with pytest.raises(timpy.RemoteError) as owner_only:
            await ann.group("dissolve", g.group)
        assert owner_only.value.code == timpy.Code.NOT_ALLOWED
        assert (await ben.group("dissolve", g.group)).dissolved
        with pytest.raises(timpy.RemoteError) as gone:
            await ben.send_group(g.group, "anyone?")
        assert gone.value.code == timpy.Code.NO_SUCH_GROUP


async def test_bad_group_requests_get_clear_errors_and_change_nothing(node):
    await users(node.tcp_url, "eve", "fay")
    async with timpy.connect(node.tcp_url, "eve", PASSWORD) as eve:
        for call, code in [
            (eve.group("explode", ""), timpy.Code.BAD_REQUEST),
            (eve.create_group("x", ["nobody-at-all"]), timpy.Code.NO_SUCH_USER),
            (eve.create_group("   "), timpy.Code.BAD_REQUEST),
            (eve.create_group("x", policy="secret"), timpy.Code.BAD_REQUEST),
            (eve.group("get", "00" * 16), timpy.Code.NO_SUCH_GROUP),
            (eve.group("get", "not-an-id"), None),
        ]:
            with pytest.raises(timpy.RemoteError) as err:
                await call
            if code is not None:
                assert err.value.code == code, err.value
        g = await eve.create_group("open one", policy="open")
        with pytest.raises(timpy.RemoteError):
            await eve.group("set_admin", g.group, users=["fay", "eve"], flag=True)
        assert (await eve.group("get", g.group)).members == ["eve"]


async def test_a_group_across_three_nodes_fans_out_once_per_node(autojump_clock):
    from contextlib import AsyncExitStack

    from timpy.testing import open_cluster

    async with open_cluster(3) as cluster:
        nodes, at = cluster.nodes, [cluster.connector(i) for i in range(3)]
        names = [f"m{i}" for i in range(9)]
        await users(at[0], *names)
        owner_of = {n: nodes[0].peers.owner(nodes[0].user_id_of(n)) for n in names}
        async with AsyncExitStack() as stack:
            creator = await stack.enter_async_context(timpy.connect(at[0], "m0", PASSWORD))
            g = await creator.create_group("everyone", names[1:], policy="invite")
            gid_owner = next(x for x in nodes if x.node_id == nodes[0].peers.owner(bytes.fromhex(g.group)))
            clients = [
                await stack.enter_async_context(timpy.connect(at[i % 3], name, PASSWORD))
                for i, name in enumerate(names[1:], start=1)
            ]
            before = gid_owner.writer.fanout_requests
            ack = await creator.send_group(g.group, "to all nine")
            got = [(await c.next_message(timeout=10)).body for c in clients]
            assert got == [b"to all nine"] * 8 and ack.seq == 1
            # One inbox request per other node owning members, not one per member.
            remote = set(owner_of.values()) - {gid_owner.node_id}
            assert gid_owner.writer.fanout_requests - before == len(remote)
            # History through any node.
            page = await clients[3].history(conversation=g.group)
            assert [m.body for m in page.messages] == [b"to all nine"]
            # Group changes made through one node hold on every replica of the group.
            await creator.group("kick", g.group, users=["m8"])
            gid = bytes.fromhex(g.group)
            for n in nodes:
                if n.node_id in n.peers.placement.replicas(gid):
                    _, version = await n.store.run(n.store.repo.get_group, gid)
                    assert version == 2
                    assert not await n.store.run(n.store.repo.is_member, gid, n.user_id_of("m8"))


async def test_a_group_profile_is_set_by_admins_and_seen_by_members(node):
    await users(node.tcp_url, "gil", "hue")
    async with timpy.connect(node.tcp_url, "gil", PASSWORD) as gil, timpy.connect(node.tcp_url, "hue", PASSWORD) as hue:
        g = await gil.create_group("Choir", ["hue"], policy="invite")
        g = await gil.group("set_profile", g.group, profile={"notice": "practice at 7", "avatar": "https://x.invalid/c"})
        assert g.profile == {"notice": "practice at 7", "avatar": "https://x.invalid/c"}
        assert (await hue.group("get", g.group)).profile == g.profile
        with pytest.raises(timpy.RemoteError) as denied:
            await hue.group("set_profile", g.group, profile={"notice": "no practice"})
        assert denied.value.code == timpy.Code.NOT_ALLOWED
        with pytest.raises(timpy.RemoteError) as empty:
            await gil.group("set_profile", g.group, profile={})
        assert empty.value.code == timpy.Code.BAD_REQUEST
        g = await gil.group("set_profile", g.group, profile={"avatar": ""})
        assert g.profile == {"notice": "practice at 7"}
        # Sealed at rest: the notice is not in the database in the clear.
        from tests.store.backends import dump_tables
        assert b"practice at 7" not in dump_tables(node.store.repo.engine)
