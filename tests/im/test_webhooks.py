"""Webhooks against a real HTTP receiver (hypercorn on 127.0.0.1, verifying
every signature): on one node, and on three in-process nodes
(``timpy.testing``, real time: the receiver's sockets are real), where each
event comes from the node that owns it, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD, node_config, users
from tests.support.http_receivers import BusinessServer
from timpy.client import Connector
from timpy.config import ClusterConfig, Limits, NodeConfig, WebhookEndpoint, WebhooksConfig
from timpy.errors import Code, RemoteError
from timpy.im import ids
from timpy.im.events import event_id
from timpy.testing import open_cluster

SECRET = "shared-secret-0123456789"
AFTER = ("message.stored", "group.changed", "user.registered", "user.login", "user.logout")
WHERE = pytest.mark.parametrize("where", ["one", "three"])


def hooks(biz: BusinessServer, *, check: bool = False, fail_open: bool = True, secret: str = SECRET,
          **settings: Any) -> WebhooksConfig:
    endpoints = [WebhookEndpoint(name="biz", url=biz.server.url("/events"), secret=secret, events=AFTER, timeout=2)]
    if check:
        endpoints.append(WebhookEndpoint(name="check", url=biz.server.url("/check"), secret=secret,
                                         events=("message.before_send",), timeout=1, fail_open=fail_open))
    return WebhooksConfig(endpoints=tuple(endpoints), **{"backoff_base": 0.05, "backoff_max": 0.3, **settings})


@asynccontextmanager
async def nodes(where: str, webhooks: WebhooksConfig, receiver: BusinessServer | None = None,
                ) -> AsyncIterator[tuple[list[str | Connector], list[timpy.Node]]]:
    if where == "one":
        async with timpy.open_node(node_config(webhooks=webhooks)) as n:
            yield [n.tcp_url] * 3, [n]
        return
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, webhooks=webhooks), seed=3) as cluster:
        if receiver is not None:  # the cluster's wall clocks start at 2026-01-01: the receiver's too
            receiver.clock = lambda: cluster.wall_clock_ms(0) / 1000
        with trio.fail_after(30):  # every node on the ring the majority accepted: owners stay put from here
            while any(len(n.peers.placement.members) != 3 for n in cluster.nodes):
                await trio.sleep(0.05)
        yield [cluster.connector(i) for i in range(3)], cluster.nodes


def once_each(biz: BusinessServer) -> Counter[str]:
    ids = Counter(biz.ids())
    assert [i for i, n in ids.items() if n > 1] == [], "an event arrived twice"
    return Counter(e["type"] for e in biz.events)


@WHERE
async def test_a_receiver_that_was_down_gets_every_event_once(where: str) -> None:
    biz = BusinessServer(SECRET)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        biz.server.stop()  # down from the start: nothing can be delivered
        async with nodes(where, hooks(biz, max_attempts=1000), biz) as (at, running):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[1], "alice", PASSWORD) as alice, timpy.connect(at[2], "bob", PASSWORD) as bob:
                acks = [await alice.send("bob", f"order {i}") for i in range(10)]
                group = await alice.create_group("team", members=["bob"])
                await alice.send_group(group.group, "hello team")
                for _ in range(11):
                    await bob.next_message(timeout=10)
            await trio.sleep(1.0)  # several failed attempts
            assert biz.events == []
            await biz.server.start(bg)  # back, on the same port
            await biz.wait_for(lambda: sum(1 for e in biz.events if e["type"] == "message.stored") == 11
                               and len(biz.ids("user.logout")) == 2, timeout=30)
            await trio.sleep(0.5)  # anything sent twice would have arrived by now
            owner = owner_of(running[0])  # while the ring is whole
            owners = {e["id"]: owner(e) for e in biz.events}
        bg.cancel_scope.cancel()
    kinds = once_each(biz)
    assert kinds["user.registered"] == 2 and kinds["message.stored"] == 11 and kinds["group.changed"] == 1
    assert kinds["user.login"] == 2 and kinds["user.logout"] == 2
    stored = {(e["data"]["conversation"], e["data"]["seq"]): e["data"] for e in biz.events
              if e["type"] == "message.stored"}
    for i, ack in enumerate(acks):
        data = stored[(ack.conversation, ack.seq)]
        assert (data["sender"], data["recipient"], data["body"], data["client_id"]) == (
            "alice", "bob", f"order {i}", ack.client_id)
    assert {e["data"]["user"] for e in biz.events if e["type"] == "user.registered"} == {"alice", "bob"}
    # each event from the node owning its key: the conversation's, the group's, the user's
    wrong = [(e["type"], e["node"], owners[e["id"]]) for e in biz.events if e["node"] != owners[e["id"]]]
    assert wrong == [], wrong
    if where == "three":
        assert len({e["node"] for e in biz.events}) >= 2


def owner_of(node: timpy.Node) -> Callable[[dict[str, Any]], str]:
    def owner(event: dict[str, Any]) -> str:
        data = event["data"]
        if event["type"] == "message.stored":
            return node.peers.owner(ids.parse_conversation(data["conversation"]))
        if event["type"] == "group.changed":
            return node.peers.owner(ids.parse_conversation(data["group"]))
        return node.peers.owner(node.user_id_of(data["user"]))

    return owner


async def test_events_wait_in_the_outbox_across_a_restart(tmp_path: Path) -> None:
    biz = BusinessServer(SECRET)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        biz.server.stop()
        config = node_config(memory=False, data_dir=tmp_path / "data", webhooks=hooks(biz, max_attempts=1000))
        async with timpy.open_node(config) as node:
            await users(node.tcp_url, "alice", "bob")
            async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
                for i in range(5):
                    await alice.send("bob", f"before the restart {i}")
        await biz.server.start(bg)
        async with timpy.open_node(config) as node:
            await biz.wait_for(lambda: len(biz.ids("message.stored")) == 5)
        bg.cancel_scope.cancel()
    kinds = once_each(biz)
    assert kinds["message.stored"] == 5 and kinds["user.registered"] == 2


@WHERE
async def test_a_check_before_storing_denies_and_rewrites(where: str) -> None:
    def verdict(data: dict[str, Any]) -> dict[str, Any] | None:
        if "buy now" in data.get("body", ""):
            return {"action": "deny", "reason": "advertising is not allowed here"}
        if "darn" in data.get("body", ""):
            return {"action": "rewrite", "body": data["body"].replace("darn", "d***")}
        return None

    biz = BusinessServer(SECRET, verdict=verdict)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        async with nodes(where, hooks(biz, check=True), biz) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[1], "alice", PASSWORD) as alice, timpy.connect(at[2], "bob", PASSWORD) as bob:
                with pytest.raises(RemoteError) as refused:
                    await alice.send("bob", "buy now!")
                assert refused.value.code == Code.NOT_ALLOWED
                assert "advertising is not allowed here" in str(refused.value)
                await alice.send("bob", "darn, missed the bus")
                group = await alice.create_group("team", members=["bob"])
                with pytest.raises(RemoteError):
                    await alice.send_group(group.group, "buy now, team")
                await alice.send_group(group.group, "darn again")
                first = await bob.next_message(timeout=10)
                second = await bob.next_message(timeout=10)
                assert (first.body, first.seq) == (b"d***, missed the bus", 1)  # the refused one took no number
                assert second.body == b"d*** again"
                history = await bob.history(peer="alice")
                assert [m.body for m in history.messages] == [b"d***, missed the bus"]
            await biz.wait_for(lambda: len(biz.ids("message.stored")) == 2)
        bg.cancel_scope.cancel()
    assert sorted(e["data"]["body"] for e in biz.events if e["type"] == "message.stored") == [
        "d*** again", "d***, missed the bus"]


async def test_a_check_that_fails_lets_messages_through_or_stops_them() -> None:
    biz = BusinessServer(SECRET, check_delay=5)  # slower than the check's 1 s timeout
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        async with nodes("one", hooks(biz, check=True, fail_open=True)) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                assert (await alice.send("bob", "through")).seq == 1
        async with nodes("one", hooks(biz, check=True, fail_open=False)) as (at, _):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                with pytest.raises(RemoteError) as refused:
                    await alice.send("bob", "stopped")
                assert refused.value.code == Code.UNAVAILABLE and "try again later" in str(refused.value)
                assert (await alice.history(peer="bob")).messages == []
        bg.cancel_scope.cancel()


async def test_unverified_deliveries_become_dead_letters_the_admin_api_retries_and_drops() -> None:
    receiver = BusinessServer("the-receivers-own-secret")  # not the node's: every signature fails
    async with trio.open_nursery() as bg:
        await receiver.server.start(bg)
        async with nodes("one", hooks(receiver, max_attempts=2)) as (at, [node]):
            await users(at[0], "alice", "bob")
            async with timpy.connect(at[0], "alice", PASSWORD) as alice:
                await alice.send("bob", "one")
                await alice.send("bob", "two")
            assert node.admin_address is not None
            api = f"http://{node.admin_address[0]}:{node.admin_address[1]}/api/v1/webhooks"
            auth = {"Authorization": f"Bearer {node.admin_token}"}
            async with httpx.AsyncClient(headers=auth) as http:
                with trio.fail_after(20):
                    while True:
                        dead = (await http.get(f"{api}/dead", params={"endpoint": "biz"})).json()["dead"]
                        if len(dead) == 6:  # 2 registered, alice's login and logout, 2 messages
                            break
                        await trio.sleep(0.1)
                assert receiver.events == [] and receiver.bad_signatures >= 12
                assert {d["last_error"] for d in dead} == {"HTTP status 401"} and {d["attempts"] for d in dead} == {2}
                stored = [d for d in dead if d["type"] == "message.stored"]
                assert sorted(httpx.Response(200, content=d["event"]).json()["data"]["body"] for d in stored) == [
                    "one", "two"]
                status = (await http.get(api)).json()["endpoints"][0]
                assert (status["name"], status["dead"], status["pending"]) == ("biz", 6, 0)
                assert (await http.get(f"{api}/dead", params={"endpoint": "nope"})).status_code == 400
                cluster = (await http.get(f"{api}/dead", params={"scope": "cluster", "limit": 4})).json()
                assert [d["node"] for d in cluster["dead"]] == [node.node_id] * 4 and cluster["unanswered"] == {}
                rest = (await http.get(f"{api}/dead", params={"scope": "cluster", "cursor": cluster["next"]})).json()
                assert sorted(d["id"] for d in cluster["dead"] + rest["dead"]) == sorted(d["id"] for d in dead)
                assert rest["next"] is None
                assert (await http.get(f"{api}/dead", params={"scope": "all"})).status_code == 400
                assert (await http.get(f"{api}/dead", params={"scope": "cluster", "cursor": "x"})).status_code == 400
                assert (await http.get(f"{api}/dead", headers={"Authorization": "Bearer wrong"})).status_code == 401
                bad = await http.post(f"{api}/dead/retry", json={"ids": ["x"]})
                assert bad.status_code == 400 and len((await http.get(f"{api}/dead")).json()["dead"]) == 6

                receiver.secret = SECRET  # the operator fixed the receiver
                retried = await http.post(f"{api}/dead/retry", json={"ids": [d["id"] for d in stored]})
                assert retried.json() == {"retried": 2}
                await receiver.wait_for(lambda: len(receiver.events) == 2)
                assert sorted(receiver.ids()) == sorted(d["event_id"] for d in stored)
                dropped = await http.post(f"{api}/dead/drop", json={"endpoint": "biz"})
                assert dropped.json() == {"dropped": 4}
                assert (await http.get(f"{api}/dead")).json()["dead"] == []
                metrics = (await http.get(f"http://{node.admin_address[0]}:{node.admin_address[1]}/metrics")).text
                assert 'timpy_webhook_deliveries_total{endpoint="biz",outcome="delivered"} 2.0' in metrics
                assert 'timpy_webhook_deliveries_total{endpoint="biz",outcome="dead"} 6.0' in metrics
        bg.cancel_scope.cancel()


async def test_a_receiver_failing_for_a_while_gets_the_event_after_retries() -> None:
    biz = BusinessServer(SECRET, failing=3)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        async with nodes("one", hooks(biz)) as (at, [node]):
            await users(at[0], "alice")
            await biz.wait_for(lambda: len(biz.events) == 1)
            assert node.webhooks is not None
            assert node.webhooks.deliveries.labels("biz", "failed")._value.get() == 3
        bg.cancel_scope.cancel()
    assert once_each(biz) == Counter({"user.registered": 1})


async def test_a_terminal_pushed_out_by_the_limit_is_a_logout() -> None:
    biz = BusinessServer(SECRET)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        config = node_config(webhooks=hooks(biz), limits=Limits(max_terminals=1))
        async with timpy.open_node(config) as node:
            await users(node.tcp_url, "alice")
            async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="laptop") as laptop:
                async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="phone"):
                    with trio.fail_after(10):
                        while laptop.closed_reason is None:
                            await trio.sleep(0.02)
                    await biz.wait_for(lambda: len(biz.ids("user.logout")) == 1 and len(biz.ids("user.login")) == 2)
            await biz.wait_for(lambda: len(biz.ids("user.logout")) == 2)
            await trio.sleep(0.3)
        bg.cancel_scope.cancel()
    assert once_each(biz)["user.logout"] == 2
    by_device = Counter((e["data"]["device"], e["type"]) for e in biz.events if e["type"] in ("user.login", "user.logout"))
    assert len({d for d, _ in by_device}) == 2 and set(by_device.values()) == {1} and len(by_device) == 4


async def test_events_of_a_node_stopped_for_good_are_delivered_by_the_survivors() -> None:
    """The outbox is copied like messages: events emitted on node A while the
    receiver is down survive A's loss (A is killed and never comes back, its
    disk gone with it), and the key's next owner delivers each one, once,
    under its event id."""
    biz = BusinessServer(SECRET)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        biz.server.stop()
        async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, webhooks=hooks(biz, max_attempts=1000)),
                                seed=5) as cluster:
            biz.clock = lambda: cluster.wall_clock_ms(0) / 1000
            await cluster.wait_converged(30)
            await users(cluster.connector(0), "alice", "bob")
            async with timpy.connect(cluster.connector(0), "alice", PASSWORD) as alice:
                first = await alice.send("bob", "order 0")
            conv = ids.parse_conversation(first.conversation)
            a = cluster.node_ids.index(cluster.nodes[0].peers.owner(conv))
            other = next(i for i in range(3) if i != a)
            async with timpy.connect(cluster.connector(other), "alice", PASSWORD) as alice:
                acks = [first] + [await alice.send("bob", f"order {i}") for i in range(1, 12)]
            emitted_on_a = await cluster.nodes[a].store.run(cluster.nodes[a].webhooks._outbox.counts)
            assert emitted_on_a[("biz", "pending")] >= 12
            await cluster.kill(a)  # for good: never started again
            await cluster.wait_converged(60)
            await biz.server.start(bg)  # the receiver comes up
            wanted = {(ack.conversation, ack.seq) for ack in acks}
            await biz.wait_for(lambda: wanted <= {(e["data"]["conversation"], e["data"]["seq"]) for e in biz.events
                                                  if e["type"] == "message.stored"}
                               and len(biz.ids("user.registered")) == 2, timeout=60)
            await trio.sleep(1.0)  # anything sent twice would have arrived by now
            survivors = {cluster.node_ids[i] for i in range(3) if i != a}
        bg.cancel_scope.cancel()
    kinds = once_each(biz)
    assert kinds["message.stored"] == 12 and kinds["user.registered"] == 2
    stored = [e for e in biz.events if e["type"] == "message.stored"]
    assert {e["node"] for e in stored} == {cluster.node_ids[a]}  # emitted on A, whose copy is gone
    assert [e["data"]["body"] for e in sorted(stored, key=lambda e: e["data"]["seq"])] == [
        f"order {i}" for i in range(12)]
    assert survivors and cluster.node_ids[a] not in survivors


async def test_shared_backends_hold_the_outbox_and_another_node_delivers_it(tmp_path: Path) -> None:
    """With shared backends the outbox rows are in the backend of each
    event's key, not on the node, and move with the key when a backend is
    added: a node whose disk is gone leaves its pending events to the node
    that owns their keys next."""
    import shutil

    from sqlalchemy import select

    from tests.store.backends import fresh_database
    from timpy.config import ClusterConfig, StorageConfig
    from timpy.im import ids
    from timpy.store import schema
    from timpy.store.backends import BackendSpec, backend_ring

    b1, b2, b3 = (BackendSpec(f"b{i}", fresh_database("sqlite", f"wh{i}", tmp_path)) for i in (1, 2, 3))
    backends = (b1, b2)
    biz = BusinessServer(SECRET)

    def config(name: str) -> NodeConfig:
        return node_config(memory=False, data_dir=tmp_path / name, cluster=ClusterConfig(listen=None),
                           cluster_key_file=tmp_path / "cluster.key",  # the operator's, kept apart from the node
                           storage=StorageConfig(backends=backends), webhooks=hooks(biz, max_attempts=1000))

    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        biz.server.stop()
        async with timpy.open_node(config("first")) as node:
            # One account whose key will be on the added backend (keys are keyed hashes under a new cluster key
            # each run: with five keys, all stayed off it about once in a hundred runs).
            later = backend_ring((b1, b2, b3))
            dave = next(n for n in (f"dave{i}" for i in range(200))
                        if later.owner(ids.user_id(node.indexer, n)) == "b3")
            await users(node.tcp_url, "alice", "bob", "carol", dave)
            async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
                acks = [await alice.send(peer, f"order {i}") for i in range(6) for peer in ("bob", "carol")]
            assert node.backends is not None
            await node.backends.add("b3", b3.url)  # the events' rows move with their keys
            assert (await node.backends.wait_moved(60))["move"] is None
            counts = await node.store.run(node.webhooks._outbox.counts)
            assert counts[("biz", "pending")] >= 15
            repo = node.store.repo
            holding = []
            for name in ("b1", "b2", "b3"):
                with repo.backend(name).engine.connect() as conn:
                    held = [bytes(k) for k in conn.execute(select(schema.webhook_outbox.c.owner_key)).scalars()]
                assert all(repo.map.place(k) == name for k in held)
                holding += [name] * bool(held)
            assert "b3" in holding and len(holding) >= 2  # rows moved to the added backend with their keys
        assert not list((tmp_path / "first").rglob("outbox*"))
        shutil.rmtree(tmp_path / "first")  # that node's disk is gone
        await biz.server.start(bg)
        async with timpy.open_node(config("second")) as node:
            await biz.wait_for(lambda: len(biz.ids("message.stored")) == 12 and len(biz.ids("user.registered")) == 4)
            await trio.sleep(0.5)
        bg.cancel_scope.cancel()
    kinds = once_each(biz)
    assert kinds["message.stored"] == 12 and kinds["user.registered"] == 4
    assert {(e["data"]["conversation"], e["data"]["seq"]) for e in biz.events if e["type"] == "message.stored"} == {
        (a.conversation, a.seq) for a in acks}


async def test_an_event_that_misses_the_write_quorum_fails_nothing_and_is_copied_later() -> None:
    """W = 3 of 3 and one replica unreachable from a key's owner: emitting an
    event there does not fail (it is in the owner's outbox, which delivers
    it), and it reaches that replica once the replica is back. A registration
    at that owner fails only for its own write, and its event is delivered
    all the same (the account is stored there and repair carries it)."""
    biz = BusinessServer(SECRET)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        config = NodeConfig(security=FAST_SECURITY, webhooks=hooks(biz, max_attempts=1000),
                            cluster=ClusterConfig(write_quorum=3))
        async with open_cluster(3, config=config, seed=7) as cluster:
            biz.clock = lambda: cluster.wall_clock_ms(0) / 1000
            await cluster.wait_converged(30)
            await users(cluster.connector(0), "alice")
            first = cluster.nodes[0]
            uid = first.user_id_of("alice")
            o = cluster.node_ids.index(first.peers.owner(uid))
            x = (o + 1) % 3
            owner, away = cluster.nodes[o], cluster.nodes[x]
            assert owner.webhooks is not None and away.webhooks is not None
            names = (f"zed{i}" for i in range(500))
            zed = next(n for n in names if owner.peers.owner(owner.user_id_of(n)) == owner.node_id)

            cluster.cut(o, x)  # x hears nothing from the owner; the third node still does
            eid = event_id("test.copy", uid)
            await owner.webhooks.emit("user.login", eid, {"user": "alice", "device": "d", "node": owner.node_id,
                                                          "time": 0}, ("user", uid))
            assert ("biz", eid) in owner.webhooks.uncopied
            await biz.wait_for(lambda: eid in biz.ids())  # the owner delivers it meanwhile
            with pytest.raises(RemoteError) as refused:  # the registration's own write misses the quorum
                await timpy.register(cluster.connector(o), zed, PASSWORD)
            assert refused.value.code == Code.UNAVAILABLE
            assert "events" not in str(refused.value)
            # the registration's own copy, what the quorum missed, carries its event with the account
            carried = await owner.store.run(owner.store.repo.user_copies, owner.user_id_of(zed), 0, 0)
            assert carried.accounts and [row[3] for row in carried.outbox] == [
                event_id("user.registered", owner.user_id_of(zed))]
            cluster.heal()

            async def held_by_away() -> bool:
                rows = await away.store.run(away.webhooks._outbox.copies, [("biz", eid)])
                return bool(rows) and owner.webhooks.uncopied == []

            with trio.fail_after(60):
                while not await held_by_away():
                    await trio.sleep(0.2)
            await biz.wait_for(lambda: any(e["data"].get("user") == zed for e in biz.events
                                           if e["type"] == "user.registered"), timeout=30)
            await trio.sleep(0.5)  # anything sent twice would have arrived by now
        bg.cancel_scope.cancel()
    kinds = once_each(biz)
    assert kinds["user.registered"] == 2 and biz.ids().count(eid) == 1


def write_old_outbox(path: Path, sealer: Any, rows: list[tuple[str, str, str, dict[str, Any], int, str]]) -> None:
    """An outbox file as the earlier version kept it (``outbox.sqlite3`` in the
    data directory: its own table, no owner keys), written with SQL of its own.
    ``rows``: (event id, event type, state, data, attempts, last error)."""
    import sqlite3

    from timpy.crypto.seal import row_ad
    from timpy.im import webhook_rules

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE webhook_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint VARCHAR(40) NOT NULL, "
                   "event_id VARCHAR(32) NOT NULL, state VARCHAR(8) NOT NULL, attempts INTEGER NOT NULL, "
                   "due_ms BIGINT NOT NULL, created_ms BIGINT NOT NULL, payload BLOB NOT NULL, error BLOB, "
                   "CONSTRAINT uq_webhook_outbox_event UNIQUE (endpoint, event_id))")
        db.execute("CREATE INDEX ix_webhook_outbox_due ON webhook_outbox (endpoint, state, due_ms)")
        for eid, event_type, state, data, attempts, error in rows:
            body = webhook_rules.envelope(event_type, eid, 1_700_000_000_000, "an-earlier-node", data)
            payload = sealer.seal(msgpack.packb([event_type, body]), row_ad("webhook_outbox", "biz", eid, ""))
            sealed_error = sealer.seal(error.encode(), row_ad("webhook_outbox", "biz", eid, "error")) if error else None
            db.execute("INSERT INTO webhook_outbox (endpoint, event_id, state, attempts, due_ms, created_ms, payload, "
                       "error) VALUES ('biz', ?, ?, ?, 1700000000000, 1700000000000, ?, ?)",
                       (eid, state, attempts, payload, sealed_error))


@pytest.mark.parametrize("storage", ["embedded", "shared"])
async def test_an_earlier_versions_outbox_file_is_drained_once(tmp_path: Path, storage: str) -> None:
    """A node upgraded from the version that kept its outbox in
    ``outbox.sqlite3`` delivers that file's pending events (to a real
    receiver), keeps its dead letters, skips what was delivered, deletes the
    file; the same file found again (a crash before it was deleted) sends
    nothing twice."""
    from tests.store.backends import fresh_database
    from timpy.config import StorageConfig
    from timpy.crypto.keys import load_or_create_cluster_key
    from timpy.crypto.seal import Sealer
    from timpy.store.backends import BackendSpec

    biz = BusinessServer(SECRET)
    group = ids.conversation_text(b"\x07" * 16)
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)  # on its port before the config names it
        config = node_config(memory=False, data_dir=tmp_path / "data", webhooks=hooks(biz, max_attempts=1000))
        if storage == "shared":
            backends = tuple(BackendSpec(f"b{i}", fresh_database("sqlite", f"old{i}", tmp_path)) for i in (1, 2))
            config = config.replace(cluster=ClusterConfig(listen=None), cluster_key_file=tmp_path / "cluster.key",
                                    storage=StorageConfig(backends=backends))
        old = config.data_dir / "outbox.sqlite3"
        async with timpy.open_node(config) as node:
            await users(node.tcp_url, "alice", "bob")
            async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
                ack = await alice.send("bob", "hello")
            await biz.wait_for(lambda: len(biz.ids("user.logout")) == 1 and len(biz.ids("message.stored")) == 1)
            registered = event_id("user.registered", node.user_id_of("alice"))  # delivered already
        assert registered in biz.ids()
        before = len(biz.events)
        keys, _ = load_or_create_cluster_key(config.key_file, create=False)
        rows = [
            ("0" * 31 + "1", "message.stored", "pending", {"conversation": ack.conversation, "seq": 7, "sender": "alice",
                                                         "recipient": "bob", "body": "from the old outbox"}, 3, "HTTP status 503"),
            ("0" * 31 + "2", "group.changed", "pending", {"group": group, "op": "create", "actor": "alice"}, 0, ""),
            ("0" * 31 + "3", "user.login", "pending", {"user": "bob", "device": "ab", "node": "x", "time": 1}, 1, ""),
            ("0" * 31 + "4", "user.logout", "dead", {"user": "alice", "device": "ab", "node": "x", "time": 2}, 12,
             "HTTP status 500"),
            ("0" * 31 + "5", "user.login", "done", {"user": "alice", "device": "cd", "node": "x", "time": 3}, 1, ""),
            (registered, "user.registered", "pending", {"user": "alice"}, 5, "no answer in time"),
        ]
        write_old_outbox(old, Sealer(keys.storage), rows)
        async with timpy.open_node(config) as node:
            await biz.wait_for(lambda: len(biz.events) == before + 3)
            assert not old.exists()
            assert node.webhooks is not None
            dead = await node.webhooks.dead_letters(None)
            assert [(d["event_id"], d["attempts"], d["last_error"]) for d in dead] == [
                (rows[3][0], 12, "HTTP status 500")]
            await trio.sleep(0.5)  # anything sent twice would have arrived by now
        assert len(biz.events) == before + 3
        write_old_outbox(old, Sealer(keys.storage), rows)  # found again: a crash before it was deleted
        async with timpy.open_node(config) as node:
            with trio.fail_after(10):
                while old.exists():
                    await trio.sleep(0.05)
            assert len(await node.webhooks.dead_letters(None)) == 1
            await trio.sleep(0.5)
        bg.cancel_scope.cancel()
    once_each(biz)
    new = biz.events[before:]
    assert sorted(e["id"] for e in new) == [rows[0][0], rows[1][0], rows[2][0]]
    stored = next(e for e in new if e["type"] == "message.stored")
    assert (stored["data"]["body"], stored["data"]["conversation"]) == ("from the old outbox", ack.conversation)


async def test_the_clusters_dead_letters_are_gathered_from_every_member() -> None:
    """Three nodes, a receiver that takes nothing: each event becomes a dead
    letter at the node owning its key, and copies of it sit on the other
    replicas. The cluster's view, asked of any member, lists each dead
    letter once, from the node that delivers it, page by page."""
    receiver = BusinessServer("the-receivers-own-secret")  # every signature fails
    async with trio.open_nursery() as bg:
        await receiver.server.start(bg)
        config = NodeConfig(security=FAST_SECURITY, webhooks=hooks(receiver, max_attempts=1))
        async with open_cluster(3, config=config, seed=3) as cluster:
            receiver.clock = lambda: cluster.wall_clock_ms(0) / 1000
            await cluster.wait_converged(30)
            at, running = [cluster.connector(i) for i in range(3)], cluster.nodes
            names = [f"user{i}" for i in range(6)]
            await users(at[0], *names)
            async with timpy.connect(at[1], "user0", PASSWORD) as user0:
                for name in names[1:]:
                    await user0.send(name, f"hello {name}")
            wanted = len(names) + 1 + 1 + len(names) - 1  # registered, user0's login and logout, messages

            async def gathered(asked: int, limit: int) -> list[dict[str, Any]]:
                webhooks = running[asked].webhooks
                assert webhooks is not None
                rows: list[dict[str, Any]] = []
                cursor = ""
                for _ in range(50):
                    page = await webhooks.cluster_dead_letters(None, cursor, limit)
                    assert page["unanswered"] == {}
                    rows += page["dead"]
                    if page["next"] is None:
                        return rows
                    cursor = page["next"]
                raise AssertionError("the pages never ended")

            def rings() -> list[int]:
                return [n.peers.placement.version for n in running]

            with trio.fail_after(60):
                while True:  # every event a dead letter, gathered while no ring changed
                    before = rings()
                    everything = await gathered(2, 100)
                    paged = await gathered(1, 2)
                    if len(everything) == wanted and rings() == before:
                        break
                    await trio.sleep(0.2)
            owner = owner_of(running[0])
            owners = {d["event_id"]: owner(httpx.Response(200, content=d["event"]).json()) for d in everything}
            held = [d for node in running for d in await node.webhooks.dead_letters(None)]  # type: ignore[union-attr]
        bg.cancel_scope.cancel()
    assert receiver.events == []
    assert len({d["event_id"] for d in everything}) == wanted == len(everything)
    assert sorted((d["node"], d["id"]) for d in paged) == sorted((d["node"], d["id"]) for d in everything)
    for d in everything:  # from the node owning the event's key, with that node's id for its retry and drop
        assert d["node"] == owners[d["event_id"]]
        assert d["last_error"] == "HTTP status 401" and d["attempts"] == 1
    assert len(held) > wanted  # each node's own view also shows its copies of other owners' dead letters
    assert {d["event_id"] for d in held} == {d["event_id"] for d in everything}
    assert len({d["node"] for d in everything}) >= 2
