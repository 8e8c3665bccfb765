"""Push to offline devices against a real Matrix push gateway (hypercorn on
127.0.0.1): on one node, and on three in-process nodes (``timpy.testing``,
real time) where the user's owner sends the notification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD, node_config, users
from tests.support.http_receivers import PushGateway
from timpy.client import Connector
from timpy.config import NodeConfig, PushConfig
from timpy.errors import Code, RemoteError
from timpy.testing import open_cluster

APP = "org.example.chat"
WHERE = pytest.mark.parametrize("where", ["one", "three"])


@asynccontextmanager
async def serving(gateway: PushGateway) -> AsyncIterator[None]:
    """The push gateway answers while the block runs."""
    async with trio.open_nursery() as bg:
        await gateway.server.start(bg)
        yield
        bg.cancel_scope.cancel()


@asynccontextmanager
async def nodes(where: str, push: PushConfig) -> AsyncIterator[tuple[list[str | Connector], list[timpy.Node]]]:
    if where == "one":
        async with timpy.open_node(node_config(push=push)) as n:
            yield [n.tcp_url] * 3, [n]
        return
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, push=push), seed=5) as cluster:
        yield [cluster.connector(i) for i in range(3)], cluster.nodes


async def until(predicate, timeout: float = 15.0) -> None:  # noqa: ANN001
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


@WHERE
async def test_an_offline_device_is_woken_an_online_one_is_not(where: str) -> None:
    gateway = PushGateway()
    async with serving(gateway):
        # The window must hold the three sends below on a loaded machine (0.3 s did not, under
        # the suite's two workers): coalescing is what is tested, not how short a window can be.
        async with nodes(where, PushConfig(coalesce=2.0)) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[1], "bob", PASSWORD, device="phone") as phone:
                mine = await phone.set_pusher(APP, "key-phone", gateway.url, {"format": "event_id_only"})
                assert [(p.pushkey, p.this_device) for p in mine] == [("key-phone", True)]
            async with timpy.connect(at[2], "bob", PASSWORD, device="desktop") as desktop:
                both = await desktop.set_pusher(APP, "key-desktop", gateway.url)
                assert sorted((p.pushkey, p.this_device) for p in both) == [("key-desktop", True), ("key-phone", False)]
                async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                    acks = [await alice.send("bob", f"secret {i}") for i in range(3)]
                    for _ in range(3):
                        await desktop.next_message(timeout=10)
                    await until(lambda: len(gateway.notifications) >= 1)
                    await trio.sleep(1.0)  # a second notification, or one for the desktop, would be here by now
    [n] = gateway.notifications  # three messages within the window: one notification, for the phone only
    assert [d["pushkey"] for d in n["devices"]] == ["key-phone"]
    assert n["devices"][0]["app_id"] == APP and n["devices"][0]["data"] == {"format": "event_id_only"}
    assert n["counts"] == {"unread": 3}
    assert (n["room_id"], n["event_id"]) == (acks[-1].conversation, f"{acks[-1].conversation}:{acks[-1].seq}")
    assert "content" not in n and "sender" not in n  # content-free by default


async def test_a_device_back_online_in_time_is_not_woken_and_content_can_be_sent() -> None:
    gateway = PushGateway()
    async with serving(gateway):
        async with nodes("one", PushConfig(coalesce=3.0, content="full")) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "bob", PASSWORD, device="phone") as phone:
                await phone.set_pusher(APP, "key-phone", gateway.url)
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "are you there?")
                async with timpy.connect(at[0], "bob", PASSWORD, device="phone") as phone:
                    await phone.next_message(timeout=5)
                    await trio.sleep(3.5)  # past the window: the phone came back, nothing is sent
                    assert gateway.notifications == []
                await alice.send("bob", "lunch at noon")
                await until(lambda: len(gateway.notifications) == 1)
    [n] = gateway.notifications
    assert n["sender"] == "alice" and n["content"] == {"msgtype": "m.text", "body": "lunch at noon"}
    assert n["counts"] == {"unread": 1}


@WHERE
async def test_a_pusher_set_after_messages_without_one_is_woken(where: str) -> None:
    # Messages to a user with no pusher are not noted at all (the records' cache says there is none);
    # a pusher set afterwards must be seen by the next message.
    gateway = PushGateway()
    async with serving(gateway):
        async with nodes(where, PushConfig(coalesce=0.2)) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "before any pusher")
                await trio.sleep(0.5)
                assert gateway.notifications == []
                async with timpy.connect(at[1], "bob", PASSWORD, device="phone") as phone:
                    await phone.set_pusher(APP, "key-phone", gateway.url)
                ack = await alice.send("bob", "after the pusher")
                await until(lambda: len(gateway.notifications) == 1)
    [n] = gateway.notifications
    assert [d["pushkey"] for d in n["devices"]] == ["key-phone"]
    assert n["event_id"] == f"{ack.conversation}:{ack.seq}"


@WHERE
async def test_a_pushkey_the_gateway_rejects_is_removed(where: str) -> None:
    gateway = PushGateway(reject={"key-stale"})
    async with serving(gateway):
        async with nodes(where, PushConfig(coalesce=0.1)) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[1], "bob", PASSWORD, device="old-phone") as old:
                await old.set_pusher(APP, "key-stale", gateway.url)
            async with timpy.connect(at[2], "bob", PASSWORD, device="tablet") as tablet:
                await tablet.set_pusher(APP, "key-good", gateway.url)
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "ping")
                await until(lambda: len(gateway.notifications) == 2)
            async with timpy.connect(at[1], "bob", PASSWORD, device="tablet") as tablet:
                with trio.fail_after(10):
                    while [p.pushkey for p in await tablet.pushers()] != ["key-good"]:
                        await trio.sleep(0.05)
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "pong")
                await until(lambda: len(gateway.notifications) == 3)
                await trio.sleep(0.5)
    assert sorted(n["devices"][0]["pushkey"] for n in gateway.notifications) == ["key-good", "key-good", "key-stale"]


async def test_pushers_are_checked_removed_and_limited() -> None:
    async with nodes("one", PushConfig(max_pushers=2, gateways=("https://push.example.org",))) as (at, _):
        await users(at[0], "bob")
        async with timpy.connect(at[0], "bob", PASSWORD, device="phone") as bob:
            with pytest.raises(RemoteError) as bad:
                await bob.set_pusher(APP, "k", "https://push.example.org/wrong/path")
            assert bad.value.code == Code.BAD_REQUEST and "_matrix/push/v1/notify" in str(bad.value)
            with pytest.raises(RemoteError) as elsewhere:
                await bob.set_pusher(APP, "k", "http://10.0.0.1/_matrix/push/v1/notify")
            assert elsewhere.value.code == Code.NOT_ALLOWED
            url = "https://push.example.org/_matrix/push/v1/notify"
            await bob.set_pusher(APP, "k1", url)
            await bob.set_pusher(APP, "k2", url)
            with pytest.raises(RemoteError) as full:
                await bob.set_pusher(APP, "k3", url)
            assert full.value.code == Code.LIMIT_REACHED
            assert [p.pushkey for p in await bob.remove_pusher(APP, "k1")] == ["k2"]
            assert [p.pushkey for p in await bob.pushers()] == ["k2"]


async def test_a_gateway_that_fails_is_tried_again() -> None:
    gateway = PushGateway(failing=2)
    async with serving(gateway):
        async with nodes("one", PushConfig(coalesce=0.1)) as (at, [node]):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "bob", PASSWORD, device="phone") as phone:
                await phone.set_pusher(APP, "key-phone", gateway.url)
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "knock knock")
            await until(lambda: len(gateway.notifications) == 1)  # after 1 s and 2 s
            assert gateway.refused == 2
            assert node.push.notifications.labels("failed")._value.get() == 2
            assert node.push.notifications.labels("sent")._value.get() == 1
