"""Shared-backend mode through real nodes and real clients: moves under
continuous traffic, crash and resume, a backend going down, two nodes
sharing the backends.

Backends are SQLite files, plus PostgreSQL and MariaDB databases where the
servers run (always in CI)."""

from __future__ import annotations

import itertools

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, node_config
from tests.store.backends import fresh_database
from timpy.config import ClusterConfig, StorageConfig
from timpy.crypto.keys import ClusterKeys
from timpy.store.backends import BackendSpec
from timpy.store.repository import Repository

PAIRS = 6


def shared_config(*specs: BackendSpec, cluster: ClusterConfig | None = None) -> timpy.NodeConfig:
    return node_config(memory=False, storage=StorageConfig(backends=specs), **({"cluster": cluster} if cluster else {}))


async def traffic(url: str, stop: trio.Event, acked: dict[tuple[str, str], list[str]], count: itertools.count) -> None:
    """PAIRS senders writing to their peers until ``stop``; every acked body recorded in order."""

    async def sender(i: int) -> None:
        me, peer = f"s{i}", f"r{i}"
        async with timpy.connect(url, me, PASSWORD, sync=False) as c:
            for _ in range(100_000):  # bounded; ends at ``stop``
                if stop.is_set():
                    return
                body = f"{me}->{peer} #{next(count)}"
                for attempt in range(20):  # a retry with the same client id is safe
                    try:
                        await c.send(peer, body, client_id=body)
                        break
                    except timpy.RemoteError as exc:
                        if exc.code != timpy.Code.UNAVAILABLE or attempt == 19:
                            raise
                        await trio.sleep(0.1)
                acked[(me, peer)].append(body)
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        for i in range(PAIRS):
            nursery.start_soon(sender, i)


async def make_users(url: str) -> None:
    for i in range(PAIRS):
        await timpy.register(url, f"s{i}", PASSWORD)
        await timpy.register(url, f"r{i}", PASSWORD)


async def check_every_message_once(url: str, acked: dict[tuple[str, str], list[str]], sync: bool = True) -> None:
    """History in order with no gap or duplicate; each receiver's sync has every message once."""
    for (me, peer), bodies in acked.items():
        async with timpy.connect(url, peer, PASSWORD, device="checker", sync=sync) as c:
            if sync:  # the receivers' first terminal: it gets every message once
                got = []
                with trio.move_on_after(10):
                    while len(got) < len(bodies):
                        got.append((await c.next_message()).body.decode())
                assert got == bodies, f"{peer}: sync differs"
            page = await c.history(me, after=0, limit=200)
            seen = list(page.messages)
            for _ in range(100):
                if not page.more:
                    break
                page = await c.history(me, after=seen[-1].seq, limit=200)
                seen += page.messages
            assert [m.seq for m in seen] == list(range(1, len(seen) + 1))
            assert [m.body.decode() for m in seen] == bodies


def held_keys(url: str, key: bytes) -> dict[str, int]:
    """Row counts of one backend (for checking that moved keys left it)."""
    from timpy.crypto.seal import Sealer
    from timpy.store.engine import url_engine

    repo = Repository(url_engine(url), Sealer(key))
    try:
        convs, users = repo.key_count()
        return {"conversations": convs, "accounts": users}
    finally:
        repo.close()


@pytest.mark.parametrize("servers", ["sqlite", "mixed"])
async def test_add_then_remove_a_backend_under_continuous_traffic(tmp_path, servers):
    kinds = ["sqlite", "sqlite", "sqlite"] if servers == "sqlite" else ["sqlite", "postgresql", "mariadb"]
    urls = [fresh_database(kind, f"timpy_move_{i}", tmp_path) for i, kind in enumerate(kinds)]
    b1, b2, b3 = (BackendSpec(f"b{i + 1}", u) for i, u in enumerate(urls))
    keys = ClusterKeys.generate()
    acked: dict[tuple[str, str], list[str]] = {(f"s{i}", f"r{i}"): [] for i in range(PAIRS)}
    async with timpy.open_node(shared_config(b1, b2, cluster=ClusterConfig(listen=None)), keys=keys) as node:
        url = node.tcp_url
        await make_users(url)
        stop = trio.Event()
        count = itertools.count()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, url, stop, acked, count)
            await trio.sleep(1.0)
            assert node.backends is not None
            await node.backends.add("b3", b3.url)
            with trio.fail_after(60):
                while node.store.repo.map.move is not None or node.backends.rebalancer.progress.phase != "done":
                    await trio.sleep(0.05)
            added = node.backends.rebalancer.progress
            assert added.keys_moving > 0 and added.rows_copied > 0 and added.rows_deleted > 0
            assert [b.name for b in node.store.repo.map.backends] == ["b1", "b2", "b3"]
            await trio.sleep(0.5)
            await node.backends.remove("b1")
            with trio.fail_after(60):
                while node.store.repo.map.move is not None or not node.backends.rebalancer.progress.done:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            stop.set()
        assert [b.name for b in node.store.repo.map.backends] == ["b2", "b3"]
        assert sum(len(v) for v in acked.values()) > 50
        await check_every_message_once(url, acked)
    # b1 left the map: every user and conversation moved off it.
    assert held_keys(b1.url, keys.storage) == {"conversations": 0, "accounts": 0}
    # The map survives a restart from a configuration that still lists only b1 and b2.
    async with timpy.open_node(shared_config(b1, b2, cluster=ClusterConfig(listen=None)), keys=keys) as node:
        assert [b.name for b in node.store.repo.map.backends] == ["b2", "b3"]
        await check_every_message_once(node.tcp_url, acked, sync=False)
