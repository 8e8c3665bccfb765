"""A user's owner killed and restarted faster than the suspicion timeout
(real ``timpy node`` processes on loopback): the user's live terminal on
another node keeps receiving, without reconnecting (issue 15, routing records)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess
from tests.support.cluster_processes import wait_members
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, decode_key
from timpy.im import ids

pytestmark = pytest.mark.e2e

# Slow failure detection on purpose: the restart must be faster than it, so
# no node ever sees the owner gone and no ring changes.
SLOW = "probe_interval = 2.0\nprobe_timeout = 1.0\nsuspicion_mult = 6\npush_pull_interval = 2.0\n"
BEFORE, AFTER = 5, 10


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def send_until_acked(client: timpy.Client, to: str, body: str, client_id: str) -> int:
    """Send, retrying with the same client id while the owner restarts (bounded)."""
    for _ in range(200):
        try:
            return (await client.send(to, body, client_id=client_id)).seq
        except timpy.RemoteError as exc:
            if exc.code != timpy.Code.UNAVAILABLE:
                raise
            await trio.sleep(0.1)
    raise AssertionError(f"{body} was never acknowledged")


async def test_live_terminal_keeps_receiving_across_a_quick_restart_of_its_users_owner(tmp_path):
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    keys = ClusterKeys(decode_key(key.read_text(), str(key)))
    peers = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes: list[NodeProcess] = []
    for i in range(3):
        work = tmp_path / f"n{i}"
        work.mkdir()
        join = "join = [" + ", ".join(f'"{p}"' for j, p in enumerate(peers) if j != i) + "]\n"
        nodes.append(NodeProcess(work, extra_args=("--peer", peers[i]), top_toml=f'cluster_key_file = "{key}"\n',
                                 cluster_toml=SLOW + join).start())
    try:
        for n in nodes:
            await wait_members(n.info["peer"], key, 3)
        indexer = BlindIndexer(keys.index)
        bob = ids.user_id(indexer, "bob")
        ring = HashRing.of([n.info["node_id"] for n in nodes])
        victim = next(n for n in nodes if n.info["node_id"] == ring.owner(bob))
        gateway = next(n for n in nodes if n is not victim)
        await timpy.register(gateway.tcp_url, "alice", PASSWORD)
        await timpy.register(gateway.tcp_url, "bob", PASSWORD)
        async with timpy.connect(gateway.tcp_url, "alice", PASSWORD) as a, \
                timpy.connect(gateway.tcp_url, "bob", PASSWORD) as b:
            await b.wait_synced()
            for i in range(BEFORE):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            got = [(await b.next_message(timeout=10)).body for _ in range(BEFORE)]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            victim.log.close()
            time.sleep(0.2)
            victim.start()  # same data directory, same peer address
            for i in range(BEFORE, BEFORE + AFTER):
                await send_until_acked(a, "bob", f"m{i}", f"c{i}")
            # bob's connection never closed: every message reaches it live.
            got += [(await b.next_message(timeout=15)).body for _ in range(AFTER)]
            assert got == [f"m{i}".encode() for i in range(BEFORE + AFTER)]
        log_text = gateway.log_text()
        assert " is dead" not in log_text, "the restart was slower than failure detection: the test proves nothing"
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
