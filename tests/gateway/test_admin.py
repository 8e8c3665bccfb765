"""The admin HTTP API and metrics, over real HTTP against real nodes."""

from __future__ import annotations

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, node_config, users
from tests.support.admin_http import http


async def test_health_ready_and_spec_need_no_token_everything_else_does(node):
    assert await http(node, "GET", "/health", token=None) == (200, {"status": "ok", "node": node.node_id})
    assert (await http(node, "GET", "/ready", token=None))[0] == 200
    status, spec = await http(node, "GET", "/openapi.json", token=None)
    assert status == 200 and "/api/v1/users/{name}/disable" in spec["paths"] and spec["openapi"].startswith("3.")
    for path in ("/metrics", "/api/v1/node", "/api/v1/limits", "/api/v1/users/alice"):
        status, body = await http(node, "GET", path, token=None)
        assert status == 401 and body["code"] == "AUTH_REQUIRED" and "Bearer" in body["error"]
        assert (await http(node, "GET", path, token="wrong"))[0] == 401


async def test_metrics_count_logins_messages_storage_and_members(node):
    await users(node.tcp_url, "alice", "bob")
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a, timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
        for i in range(3):
            await a.send("bob", f"m{i}")
        for _ in range(3):
            await b.next_message(timeout=5)
        with pytest.raises(timpy.RemoteError):
            await a.send("nobody-here", "x")
    status, text = await http(node, "GET", "/metrics")
    assert status == 200
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert lines['timpy_logins_total{method="password"}'] == 2
    assert lines["timpy_messages_in_total"] == 3
    assert lines["timpy_send_latency_seconds_count"] == 3
    assert lines['timpy_errors_total{code="NO_SUCH_USER"}'] == 1
    assert lines[f'timpy_deliveries_total{{node="{node.node_id}"}}'] >= 3
    assert lines['timpy_storage_seconds_count{operation="write_batch"}'] >= 1
    assert lines['timpy_members{state="alive"}'] == 1
    assert lines['timpy_peer_paths{path="relay"}'] == 0 and lines['timpy_nat_events_total{event="ice_failed"}'] == 0
    assert 'timpy_queue_depth{queue="writer"}' in lines and "timpy_connections" in lines


async def test_user_lookup_disable_kick_enable_and_password_reset(node):
    await users(node.tcp_url, "alice", "bob")
    status, found = await http(node, "GET", "/api/v1/users/Alice")
    assert status == 200 and found["name"] == "alice" and found["disabled"] is False
    assert not any("secret" in k or "hash" in k for k in found)
    assert (await http(node, "GET", "/api/v1/users/nobody"))[0] == 404

    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
        token = alice.token
        status, _ = await http(node, "POST", "/api/v1/users/alice/disable")
        assert status == 200
        with trio.fail_after(5):  # her live terminal is closed, with the reason
            with pytest.raises(timpy.RemoteError) as kicked:
                while True:
                    await alice.ping()
                    await trio.sleep(0.05)
        assert kicked.value.code == timpy.Code.KICKED and "disabled" in kicked.value.text
    for login in (dict(user="alice", password=PASSWORD), dict(token=token)):
        with pytest.raises(timpy.RemoteError) as refused:
            async with timpy.connect(node.tcp_url, **login):
                pass
        assert refused.value.code == timpy.Code.ACCOUNT_DISABLED
    assert (await http(node, "GET", "/api/v1/users/alice"))[1]["disabled"] is True
    assert (await http(node, "POST", "/api/v1/users/alice/enable"))[0] == 200

    # A weak password is refused and changes nothing; a good one replaces the old.
    status, body = await http(node, "POST", "/api/v1/users/alice/password", {"password": "x"})
    assert status == 400 and body["code"] == "WEAK_PASSWORD"
    assert (await http(node, "POST", "/api/v1/users/alice/password", b"not json"))[0] == 400
    async with timpy.connect(node.tcp_url, "alice", PASSWORD):
        pass
    assert (await http(node, "POST", "/api/v1/users/alice/password", {"password": "a-new-password"}))[0] == 200
    with pytest.raises(timpy.RemoteError):
        async with timpy.connect(node.tcp_url, "alice", PASSWORD):
            pass
    async with timpy.connect(node.tcp_url, "alice", "a-new-password") as alice:
        async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone"):
            # Kick: every terminal of the user closes.
            assert (await http(node, "POST", "/api/v1/users/alice/kick"))[0] == 200
            with trio.fail_after(5), pytest.raises(timpy.RemoteError):
                while True:
                    await alice.ping()
                    await trio.sleep(0.05)


async def test_a_system_message_is_stored_and_delivered_and_the_name_is_reserved(node):
    await users(node.tcp_url, "bob")
    with pytest.raises(timpy.RemoteError) as reserved:
        await timpy.register(node.tcp_url, "system", PASSWORD)
    assert reserved.value.code == timpy.Code.INVALID_NAME
    async with timpy.connect(node.tcp_url, "bob", PASSWORD) as bob:
        status, sent = await http(node, "POST", "/api/v1/messages", {"to": "bob", "body": "maintenance at 02:00"})
        assert status == 200 and sent["seq"] == 1
        m = await bob.next_message(timeout=5)
        assert m.sender == "system" and m.body == b"maintenance at 02:00"
        assert [x.body for x in (await bob.history("system")).messages] == [b"maintenance at 02:00"]
    status, body = await http(node, "POST", "/api/v1/messages", {"to": "nobody", "body": "x"})
    assert status == 404 and body["code"] == "NO_SUCH_USER"
    assert (await http(node, "POST", "/api/v1/messages", {"to": "bob"}))[0] == 400
    with pytest.raises(timpy.RemoteError) as refused:  # nobody logs in as "system"
        async with timpy.connect(node.tcp_url, "system", PASSWORD):
            pass
    assert refused.value.code == timpy.Code.BAD_CREDENTIALS


async def test_limits_change_at_run_time_and_bad_changes_change_nothing(node):
    await users(node.tcp_url, "alice")
    status, limits = await http(node, "GET", "/api/v1/limits")
    assert status == 200 and limits["max_body"] == 64 * 1024
    for bad in ({"max_body": -1}, {"max_body": 1.5}, {"no_such_limit": 3}, {"max_body": "big"}):
        status, body = await http(node, "PUT", "/api/v1/limits", bad)
        assert status == 400 and body["code"] == "BAD_REQUEST"
    assert (await http(node, "GET", "/api/v1/limits"))[1] == limits
    status, changed = await http(node, "PUT", "/api/v1/limits", {"max_body": 16})
    assert status == 200 and changed["max_body"] == 16
    async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
        with pytest.raises(timpy.RemoteError) as too_big:
            await alice.send("alice", "x" * 17)
        assert too_big.value.code == timpy.Code.BODY_TOO_LARGE
        await alice.send("alice", "x" * 16)


async def test_disabling_through_one_node_holds_on_every_node_of_a_cluster():
    from tests.support.node_clusters import cluster

    async with cluster(3) as (nodes, _, _):
        await users(nodes[0].tcp_url, "carol")
        assert (await http(nodes[1], "POST", "/api/v1/users/carol/disable"))[0] == 200
        for n in nodes:
            assert (await http(n, "GET", "/api/v1/users/carol"))[1]["disabled"] is True
            with pytest.raises(timpy.RemoteError) as refused:
                async with timpy.connect(n.tcp_url, "carol", PASSWORD):
                    pass
            assert refused.value.code == timpy.Code.ACCOUNT_DISABLED
        # Every replica has the change (a new owner would keep it).
        uid = nodes[0].user_id_of("carol")
        holders = nodes[0].peers.placement.replicas(uid)
        for n in nodes:
            if n.node_id in holders:
                account = await n.store.run(n.store.repo.get_account, uid)
                assert account is not None and account.disabled and account.version == 1


def test_the_admin_listener_stays_off_public_interfaces_unless_asked():
    from timpy.config import AdminConfig
    from timpy.errors import ConfigError

    with pytest.raises(ConfigError, match="allow_public"):
        node_config(admin=AdminConfig(listen="0.0.0.0:7073"))
    assert AdminConfig(listen="0.0.0.0:7073", allow_public=True).listen == "0.0.0.0:7073"
    assert AdminConfig(listen="off").listen is None


async def test_a_broadcast_reaches_every_user_of_the_cluster_once():
    from tests.support.node_clusters import cluster

    async with cluster(3) as (nodes, _, _):
        names = [f"user{i}" for i in range(12)]
        await users(nodes[0].tcp_url, *names)
        status, result = await http(nodes[2], "POST", "/api/v1/messages", {"to": "*", "body": "we are upgrading"})
        assert status == 200 and result["sent"] == len(names)
        assert len(result["by_node"]) == 3 and sum(result["by_node"].values()) == len(names)
        # Run again on the same broadcast id (as a retry would): nobody gets it twice.
        again = await nodes[0]._broadcast_here(result["broadcast"], b"we are upgrading")
        again += sum([await n._broadcast_here(result["broadcast"], b"we are upgrading") for n in nodes[1:]])
        assert again == len(names)
        for i, name in enumerate(names):
            async with timpy.connect(nodes[i % 3].tcp_url, name, PASSWORD, sync=False) as c:
                page = await c.history("system")
                assert [m.body for m in page.messages] == [b"we are upgrading"]


async def test_a_broadcast_on_shared_backends_reaches_each_user_once(tmp_path):
    from tests.store.backends import fresh_database
    from tests.support.shared_backends import shared_config
    from timpy.config import ClusterConfig
    from timpy.store.backends import BackendSpec

    specs = [BackendSpec(f"b{i}", fresh_database("sqlite", f"bc{i}", tmp_path)) for i in range(2)]
    config = shared_config(tmp_path / "n", *specs, cluster=ClusterConfig(listen=None))
    async with timpy.open_node(config) as node:
        await users(node.tcp_url, *[f"u{i}" for i in range(10)])
        status, result = await http(node, "POST", "/api/v1/messages", {"to": "*", "body": "hello all"})
        assert status == 200 and result["sent"] == 10
        async with timpy.connect(node.tcp_url, "u3", PASSWORD, sync=False) as c:
            assert [m.body for m in (await c.history("system")).messages] == [b"hello all"]


async def test_group_lookup_and_a_system_message_to_a_group_across_nodes():
    from tests.support.node_clusters import cluster

    async with cluster(3) as (nodes, _, _):
        await users(nodes[0].tcp_url, "gus", "hal", "ida")
        async with timpy.connect(nodes[1].tcp_url, "gus", PASSWORD) as gus, \
                timpy.connect(nodes[2].tcp_url, "hal", PASSWORD) as hal:
            g = await gus.create_group("ops watchers", ["hal"])
            await timpy.register(nodes[0].tcp_url, "jo", PASSWORD)
            async with timpy.connect(nodes[0].tcp_url, "jo", PASSWORD) as jo:
                await jo.group("join", g.group)  # a request, seen by the operator
            status, info = await http(nodes[0], "GET", f"/api/v1/groups/{g.group}")
            assert status == 200 and info["name"] == "ops watchers" and info["owner"] == "gus"
            assert info["members"] == ["gus", "hal"] and info["requests"] == ["jo"] and info["version"] == 2
            status, sent = await http(nodes[2], "POST", "/api/v1/messages", {"group": g.group, "body": "heads up"})
            assert status == 200 and sent["seq"] == 1
            for member in (gus, hal):
                m = await member.next_message(timeout=5)
                assert m.sender == "system" and m.body == b"heads up" and m.conversation == g.group
            assert (await http(nodes[0], "GET", "/api/v1/groups/" + "00" * 16))[0] == 404
            assert (await http(nodes[0], "GET", "/api/v1/groups/nonsense"))[0] == 400
            assert (await http(nodes[0], "POST", "/api/v1/messages", {"group": "00" * 16, "body": "x"}))[0] == 404
