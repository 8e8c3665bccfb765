"""Three real ``timpy node`` processes on loopback, joined with --join
semantics (config), one killed with SIGKILL in the middle of traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio

import timpy
from tests.conftest import PASSWORD
from tests.support.cluster_processes import start_cluster, wait_members
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.im import ids

MESSAGES = 150


async def test_sigkill_in_the_middle_of_traffic_loses_and_duplicates_nothing(tmp_path):
    nodes, keys = start_cluster(tmp_path)
    try:
        for n in nodes:
            await wait_members(n.info["peer"], tmp_path / "cluster.key", 3)
        status = subprocess.run(
            [sys.executable, "-m", "timpy", "cluster", "status", "--peer", nodes[1].info["peer"],
             "--cluster-key", str(tmp_path / "cluster.key")],
            capture_output=True, text=True, timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert all(n.info["node_id"] in status.stdout for n in nodes) and status.stdout.count("alive") == 3, status.stdout
        subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(tmp_path / "other.key")], check=True)
        refused = subprocess.run(
            [sys.executable, "-m", "timpy", "cluster", "status", "--peer", nodes[1].info["peer"],
             "--cluster-key", str(tmp_path / "other.key")],
            capture_output=True, text=True, timeout=30,
        )
        assert refused.returncode == 1 and "refused the handshake" in refused.stderr
        indexer = BlindIndexer(keys.index)
        alice, bob = ids.user_id(indexer, "alice"), ids.user_id(indexer, "bob")
        conv = ids.direct_conversation(indexer, alice, bob)
        ring = HashRing.of([n.info["node_id"] for n in nodes])
        # Kill the conversation's owner, where bob is connected too; alice sends from another node.
        victim = next(n for n in nodes if n.info["node_id"] == ring.owner(conv))
        survivors = [n for n in nodes if n is not victim]
        await timpy.register(survivors[0].tcp_url, "alice", PASSWORD)
        await timpy.register(survivors[0].tcp_url, "bob", PASSWORD)

        acked: list[int] = []
        received: list[bytes] = []
        killed = trio.Event()

        async def sender() -> None:
            i, attempt = 0, 0
            while i < MESSAGES and attempt < 200:
                node = survivors[attempt % 2]
                attempt += 1
                try:
                    async with timpy.connect(node.tcp_url, "alice", PASSWORD, device="laptop", sync=False) as a:
                        while i < MESSAGES:
                            await a.send("bob", f"msg {i}", client_id=f"alice-{i}")  # same id on a retry
                            acked.append(i)
                            i += 1
                            if i == MESSAGES // 3:
                                victim.proc.send_signal(signal.SIGKILL)
                                killed.set()
                            await trio.sleep(0.005)
                except (timpy.RemoteError, OSError) as exc:
                    assert getattr(exc, "code", timpy.Code.UNAVAILABLE) == timpy.Code.UNAVAILABLE, exc
                    await trio.sleep(0.2)

        async def receiver() -> None:
            position, attempt = 0, 0
            urls = [victim.tcp_url, survivors[1].tcp_url, survivors[0].tcp_url]
            while len(received) < MESSAGES and attempt < 200:
                url = urls[min(attempt, len(urls) - 1)]
                attempt += 1
                try:
                    async with timpy.connect(url, "bob", PASSWORD, device="phone", resume_after=position) as b:
                        while len(received) < MESSAGES:
                            m = await b.next_message(timeout=30)
                            received.append(m.body)
                            position = b.position
                except (timpy.RemoteError, OSError) as exc:
                    assert getattr(exc, "code", timpy.Code.UNAVAILABLE) == timpy.Code.UNAVAILABLE, exc
                    await trio.sleep(0.2)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(receiver)
        assert killed.is_set()
        expected = [f"msg {i}".encode() for i in range(MESSAGES)]
        assert acked == list(range(MESSAGES))
        assert received == expected  # every acknowledged message, once, in order
        async with timpy.connect(survivors[1].tcp_url, "alice", PASSWORD, sync=False) as a:
            page = await a.history("bob", limit=200)
        assert [m.seq for m in page.messages] == list(range(1, MESSAGES + 1))
        assert [m.body for m in page.messages] == expected
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()


def test_joining_without_the_cluster_key_is_refused_with_advice(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "timpy", "node", "--data", str(tmp_path / "d"), "--listen", "off", "--ws", "off",
         "--peer", "127.0.0.1:0", "--join", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "TIMPY_CLUSTER_KEY"},
    )
    assert result.returncode == 1
    assert "joining a cluster needs its key" in result.stderr and "--cluster-key" in result.stderr
    assert not (tmp_path / "d" / "cluster.key").exists()  # no new key was made up
