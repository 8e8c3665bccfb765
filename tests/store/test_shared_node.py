"""Shared-backend mode through real nodes and real clients: moves under
continuous traffic, crash and resume, a backend going down, two nodes
sharing the backends.

Backends are SQLite files, plus PostgreSQL and MariaDB databases where the
servers run (always in CI)."""

from __future__ import annotations

import itertools
import os
from contextlib import AsyncExitStack

import pytest
import trio

import timpy
from tests.conftest import PASSWORD
from tests.store.backends import fresh_database
from tests.support.shared_backends import shared_config
from timpy.config import ClusterConfig
from timpy.crypto.keys import ClusterKeys
from timpy.store.backends import BackendSpec
from timpy.store.repository import Repository

PAIRS = 6


async def traffic(
    url: str, stop: trio.Event, acked: dict[tuple[str, str], list[str]], count: itertools.count,
    senders: range = range(PAIRS),
) -> None:
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
        for i in senders:
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
    async with timpy.open_node(shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None)), keys=keys) as node:
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
    async with timpy.open_node(shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None)), keys=keys) as node:
        assert [b.name for b in node.store.repo.map.backends] == ["b2", "b3"]
        await check_every_message_once(node.tcp_url, acked, sync=False)


class Proxy:
    """A TCP forwarder in front of a database server, to take a backend down and back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(*self.target) as server:

            async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
                try:
                    while data := await a.receive_some(65536):
                        await b.send_all(data)
                except trio.BrokenResourceError:
                    pass
                await b.aclose()

            async with trio.open_nursery() as n:
                n.start_soon(pump, client, server)
                n.start_soon(pump, server, client)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


async def test_a_backend_that_is_down_fails_only_its_own_keys_and_service_resumes(tmp_path):
    from timpy.im import ids

    down = fresh_database("postgresql", "timpy_down", tmp_path)
    proxy = Proxy(("127.0.0.1", 5432))
    names = [f"u{i}" for i in range(16)]
    async with trio.open_nursery() as outer:
        await outer.start(proxy.serve)
        pg_url = down.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        b1 = BackendSpec("lite", fresh_database("sqlite", "lite", tmp_path))
        b2 = BackendSpec("pg", pg_url)
        async with timpy.open_node(shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None))) as node:
            url = node.tcp_url
            for name in names:
                await timpy.register(url, name, PASSWORD)
            place = node.store.repo.map.place
            uid = {n: ids.user_id(node.indexer, n) for n in names}

            def backends_of(a: str, b: str) -> set[str]:
                return {place(uid[a]), place(uid[b]), place(ids.direct_conversation(node.indexer, uid[a], uid[b]))}

            pairs = [(a, b) for a in names for b in names if a < b]
            on_lite = next(p for p in pairs if backends_of(*p) == {"lite"})
            on_pg = next(p for p in pairs if backends_of(*p) == {"pg"})
            async with timpy.connect(url, on_lite[0], PASSWORD) as lite, timpy.connect(url, on_pg[0], PASSWORD) as pg:
                await lite.send(on_lite[1], "before", client_id="before")
                await pg.send(on_pg[1], "before", client_id="before")
                proxy.stop()
                await trio.sleep(0.2)
                # Keys on the other backend carry on; keys on the dead one fail, naming it.
                with pytest.raises(timpy.RemoteError) as err:
                    await pg.send(on_pg[1], "while down", client_id="down-1")
                assert err.value.code == timpy.Code.UNAVAILABLE and "'pg'" in err.value.text
                for i in range(5):
                    await lite.send(on_lite[1], f"lite {i}", client_id=f"lite-{i}")
                with pytest.raises(timpy.RemoteError):
                    await pg.history(on_pg[1])
                # The server comes back: the same client id completes the send, once.
                await outer.start(proxy.serve)
                with trio.fail_after(30):
                    while True:
                        try:
                            ack = await pg.send(on_pg[1], "while down", client_id="down-1")
                            break
                        except timpy.RemoteError as exc:
                            assert exc.code == timpy.Code.UNAVAILABLE
                            await trio.sleep(0.5)
                assert ack.seq == 2
                page = await pg.history(on_pg[1])
                assert [m.body for m in page.messages] == [b"before", b"while down"]
                page = await lite.history(on_lite[1])
                assert len(page.messages) == 6
        proxy.stop()


async def test_a_move_interrupted_by_a_crash_resumes_when_the_node_restarts(tmp_path):
    from timpy.crypto.seal import Sealer  # noqa: F401 - the node seals; the test only counts
    from timpy.store.rows import NewMessage

    keys = ClusterKeys.generate()
    b1, b2, b3 = (BackendSpec(f"b{i}", fresh_database("sqlite", f"crash{i}", tmp_path)) for i in (1, 2, 3))
    config = shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None))
    users = [bytes([i]) * 16 for i in range(1, 41)]
    async with timpy.open_node(config, keys=keys) as node:
        repo = node.store.repo
        for u in users:
            await node.store.run(repo.create_account, u, b"secret", b"profile")
        batch = [
            NewMessage(bytes([c]) * 15 + b"c", (users[c % 40], users[(c + 1) % 40]), users[c % 40], bytes([c, j]) * 8, 1, b"m")
            for c in range(120) for j in range(20)
        ]
        for start in range(0, len(batch), 400):
            await node.store.run(repo.write_batch, batch[start : start + 400])
        assert node.backends is not None
        # Slow each copy step down so the "crash" lands in the copy phase.
        original = node.backends.rebalancer._copy_key

        async def slow_copy(*args):  # type: ignore[no-untyped-def]
            await trio.sleep(0.01)
            await original(*args)

        node.backends.rebalancer._copy_key = slow_copy  # type: ignore[method-assign]
        await node.backends.add("b3", b3.url)
        with trio.fail_after(30):
            while node.backends.rebalancer.progress.rows_copied == 0:
                await trio.sleep(0.01)
        assert node.store.repo.map.move is not None and node.store.repo.map.move.phase == "copy"
    # The node is gone mid-copy; its successor (same data, same map) resumes the move.
    async with timpy.open_node(config, keys=keys) as node:
        assert node.backends is not None
        with trio.fail_after(60):
            while node.store.repo.map.move is not None:
                await trio.sleep(0.05)
        repo = node.store.repo
        assert [b.name for b in repo.map.backends] == ["b1", "b2", "b3"]
        for c in range(120):
            conv = bytes([c]) * 15 + b"c"
            rows, more = await node.store.run(repo.read_history, conv, 0, 0, 100)
            assert [r.seq for r in rows] == list(range(1, 21)) and not more
        for u in users:
            entries = await node.store.run(repo.read_inbox, u, 0, 1000)
            assert [e.pos for e in entries] == list(range(1, 121))  # 6 conversations of 20
        # Nothing stays behind where it no longer belongs.
        for name in ("b1", "b2", "b3"):
            stats = await node.store.run(repo.backend(name).key_stats, "conv", [bytes([c]) * 15 + b"c" for c in range(120)])
            assert all(repo.map.place(k) == name for k in stats)


async def test_two_nodes_share_the_backends_and_a_move_driven_from_the_cli_path_reaches_both(tmp_path):
    from tests.support.node_clusters import FAST_CLUSTER, wait_for_ring
    from timpy.cli.cluster import ask_node
    from timpy.crypto.keys import load_or_create_cluster_key

    key_file = tmp_path / "cluster.key"
    keys, _ = load_or_create_cluster_key(key_file)
    b1, b2, b3 = (BackendSpec(f"b{i}", fresh_database("sqlite", f"two{i}", tmp_path)) for i in (1, 2, 3))
    acked: dict[tuple[str, str], list[str]] = {(f"s{i}", f"r{i}"): [] for i in range(PAIRS)}
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            timpy.open_node(shared_config(tmp_path / "n1", b1, b2, cluster=ClusterConfig(**FAST_CLUSTER)), keys=keys)
        )
        second = await stack.enter_async_context(timpy.open_node(
            shared_config(tmp_path / "n2", b1, b2, cluster=ClusterConfig(join=(first.peer_address,), **FAST_CLUSTER)), keys=keys
        ))
        await wait_for_ring([first, second])
        assert first.peers.placement.config.replicas == 1  # the backends keep the copies
        await make_users(first.tcp_url)
        stop = trio.Event()
        count = itertools.count()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, first.tcp_url, stop, acked, count, range(0, PAIRS, 2))
            nursery.start_soon(traffic, second.tcp_url, stop, acked, count, range(1, PAIRS, 2))
            await trio.sleep(1.0)
            # What `timpy backend add` sends, through the peer port, with the key file.
            info = await ask_node(second.peer_address, key_file, "backend.add", "b3", b3.url, 1.0, timeout=60)
            assert info["move"]["phase"] in ("copy", "freeze", "cleanup")
            with trio.fail_after(60):
                while True:
                    status = await ask_node(second.peer_address, key_file, "backend.status")
                    if status["move"] is None and status["progress"]["done"]:
                        break
                    await trio.sleep(0.1)
            await trio.sleep(0.5)
            stop.set()
        assert first.store.repo.map == second.store.repo.map
        assert [b["name"] for b in status["backends"]] == ["b1", "b2", "b3"]
        assert status["progress"]["keys_moving"] > 0
        await check_every_message_once(first.tcp_url, acked)
        # A bad request changes nothing.
        with pytest.raises(timpy.TimpyError, match="already"):
            await ask_node(first.peer_address, key_file, "backend.add", "b4", b3.url, 1.0, timeout=30)
        with pytest.raises(timpy.TimpyError, match="no backend named"):
            await ask_node(first.peer_address, key_file, "backend.remove", "nope", timeout=30)
        assert first.store.repo.map == second.store.repo.map and first.store.repo.map.move is None


async def test_a_group_changed_during_a_move_arrives_changed(tmp_path):
    b1, b2, b3 = (BackendSpec(f"b{i}", fresh_database("sqlite", f"grp{i}", tmp_path)) for i in (1, 2, 3))
    async with timpy.open_node(shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None))) as node:
        names = [f"p{i}" for i in range(4)]
        for name in names:
            await timpy.register(node.tcp_url, name, PASSWORD)
        async with timpy.connect(node.tcp_url, "p0", PASSWORD) as p0:
            groups = [await p0.create_group(f"g{i}", names[1:]) for i in range(12)]
            for g in groups:
                await p0.send_group(g.group, "before")
            assert node.backends is not None
            original = node.backends.rebalancer._copy_pass
            renamed = trio.Event()

            async def copy_then_rename(m, final):  # noqa: ANN001, ANN202
                await original(m, final)
                if not final:  # between the copy pass and the freeze: change every group
                    for g in groups:
                        await p0.group("rename", g.group, name=g.name + " (renamed)")
                        await p0.group("kick", g.group, users=["p3"])
                    renamed.set()

            node.backends.rebalancer._copy_pass = copy_then_rename  # type: ignore[method-assign]
            await node.backends.add("b3", b3.url)
            status = await node.backends.wait_moved(60)
            assert renamed.is_set() and status["move"] is None and status["progress"]["keys_moving"] > 0
            for g in groups:
                info = await p0.group("get", g.group)
                assert info.name.endswith("(renamed)") and info.members == ["p0", "p1", "p2"]
                assert [m.body for m in (await p0.history(conversation=g.group)).messages] == [b"before"]


def attachments_held(url: str, key: bytes) -> dict[bytes, tuple[bool, int]]:
    """Of one backend: each attachment id it holds, with (deleted, chunk rows)."""
    from sqlalchemy import func, select

    from timpy.store import schema as s
    from timpy.store.engine import url_engine

    engine = url_engine(url)
    try:
        with engine.connect() as conn:
            a, c = s.attachments, s.attachment_chunks
            chunks = dict(conn.execute(select(c.c.att_id, func.count()).group_by(c.c.att_id)).all())
            return {bytes(r.att_id): (bool(r.deleted), int(chunks.get(r.att_id, 0)))
                    for r in conn.execute(select(a.c.att_id, a.c.deleted))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("servers", ["sqlite", "mixed"])
async def test_a_backend_move_moves_attachments_with_their_chunks(tmp_path, servers):
    """Files are stored in the SQL backends and moved by rebalancing: after a
    backend is added and another removed, every file (and a deleted file's
    tombstone) lives only on the backend its id is placed on, and downloads whole."""
    from timpy.config import FilesConfig

    kinds = ["sqlite", "sqlite", "sqlite"] if servers == "sqlite" else ["postgresql", "mariadb", "sqlite"]
    urls = [fresh_database(kind, f"timpy_files_{i}", tmp_path) for i, kind in enumerate(kinds)]
    b1, b2, b3 = (BackendSpec(f"b{i + 1}", u) for i, u in enumerate(urls))
    keys = ClusterKeys.generate()
    cfg = shared_config(tmp_path / "node", b1, b2, cluster=ClusterConfig(listen=None)).replace(
        files=FilesConfig(chunk_size=1024)
    )
    async with timpy.open_node(cfg, keys=keys) as node:
        url = node.tcp_url
        await timpy.register(url, "ann", PASSWORD)
        await timpy.register(url, "bob", PASSWORD)
        async with timpy.connect(url, "ann", PASSWORD, sync=False) as ann:
            files = {}
            for i in range(12):
                data = os.urandom(3 * 1024 + 1 + i)  # 4 chunks each
                att = await ann.upload(data, name=f"f{i}.bin")
                await ann.send_file(att, to="bob")
                files[att.id] = data
            deleted = await ann.upload(b"recalled soon" * 10, name="gone.bin")
            ack = await ann.send_file(deleted, to="bob")
            await ann.recall(ack.seq, to="bob")
            gone = bytes.fromhex(deleted.id)
            with trio.fail_after(10):  # the last reference goes in the background
                while not attachments_held(urls[0], keys.storage).get(gone, (False,))[0] and not (
                    attachments_held(urls[1], keys.storage).get(gone, (False,))[0]
                ):
                    await trio.sleep(0.05)
            assert node.backends is not None
            for change in (lambda: node.backends.add("b3", b3.url), lambda: node.backends.remove("b1")):
                await change()
                with trio.fail_after(60):
                    while node.store.repo.map.move is not None or not node.backends.rebalancer.progress.done:
                        await trio.sleep(0.05)
                m = node.store.repo.map
                held = {b.name: attachments_held(b.url, keys.storage) for b in (b1, b2, b3)}
                for att_id in [*files, deleted.id]:
                    key = bytes.fromhex(att_id)
                    where = [name for name, atts in held.items() if key in atts]
                    assert where == [m.place(key)], (att_id, where)
                    assert held[m.place(key)][key] == ((True, 0) if key == gone else (False, 4))
            assert [b.name for b in node.store.repo.map.backends] == ["b2", "b3"]
            assert attachments_held(b1.url, keys.storage) == {}
        async with timpy.connect(url, "bob", PASSWORD, sync=False) as bob:
            for att_id, data in files.items():
                assert await bob.download(att_id) == data
            with pytest.raises(timpy.RemoteError) as err:
                await bob.download(deleted.id)
            assert err.value.code == timpy.Code.NO_SUCH_FILE
