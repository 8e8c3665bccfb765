"""Shutdown within a bound, with real ``timpy node`` processes: a first SIGINT drains
within shutdown_timeout; a second SIGINT, or the bound passing, exits at once."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess
from tests.support.cluster_processes import FAST, wait_members

BOUND = 8.0  # shutdown_timeout given to the nodes
MARGIN = 10.0  # process exit and interpreter teardown on a loaded machine


def wait_exit(node: NodeProcess, within: float) -> tuple[int, float]:
    """The exit code, and the seconds it took; -1 if still running after ``within``."""
    assert node.proc is not None
    start = time.monotonic()
    try:
        code = node.proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait(timeout=10)
        return -1, time.monotonic() - start
    return code, time.monotonic() - start


async def test_a_cluster_under_load_stopped_together_exits_within_the_bound(tmp_path):
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    nodes: list[NodeProcess] = []
    try:
        for i in range(3):
            work = tmp_path / f"n{i}"
            work.mkdir()
            join = f'join = ["{nodes[0].info["peer"]}"]\n' if nodes else ""
            top = f'cluster_key_file = "{key}"\nshutdown_timeout = {BOUND}\n'
            nodes.append(NodeProcess(work, top_toml=top, cluster_toml=FAST + join).start())
        for n in nodes:
            await wait_members(n.info["peer"], key, 3)
        await timpy.register(nodes[0].tcp_url, "alice", PASSWORD)
        await timpy.register(nodes[1].tcp_url, "bob", PASSWORD)
        acked: list[int] = []
        stopped = trio.Event()

        async def sender(node: NodeProcess, offset: int) -> None:
            try:
                async with timpy.connect(node.tcp_url, "alice", PASSWORD, device=f"d{offset}", sync=False) as a:
                    for i in range(offset, offset + 100_000):
                        await a.send("bob", f"msg {i}", client_id=f"alice-{i}")
                        acked.append(i)
                        if stopped.is_set():
                            return
            except (timpy.RemoteError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the node went away under the sender, as it should

        async with trio.open_nursery() as nursery:
            for k, n in enumerate(nodes):
                nursery.start_soon(sender, n, k * 1_000_000)
            with trio.fail_after(60):
                while len(acked) < 60:  # traffic flows on every path before the stop
                    await trio.sleep(0.05)
            for n in nodes:
                assert n.proc is not None
                n.proc.send_signal(signal.SIGINT)
            results = await trio.to_thread.run_sync(lambda: [wait_exit(n, BOUND + MARGIN) for n in nodes])
            stopped.set()
        for n, (code, seconds) in zip(nodes, results, strict=True):
            assert code == 0, f"exit {code} after {seconds:.1f} s:\n{n.log_text()[-3000:]}"
            assert "stopped" in n.log_text()
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()


def _stats(node: NodeProcess) -> dict[str, int]:
    token = (node.workdir / "data" / "admin.token").read_text().strip()
    req = urllib.request.Request(f"http://{node.info['admin']}/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _stuck_drain(tmp_path: Path, timeout: float) -> tuple[NodeProcess, sqlite3.Connection, subprocess.Popen[bytes]]:
    """A node whose database another program holds locked while a client's send is in flight."""
    node = NodeProcess(tmp_path, top_toml=f"shutdown_timeout = {timeout}\n").start()
    trio.run(timpy.register, node.tcp_url, "alice", PASSWORD)
    db = sqlite3.connect(tmp_path / "data" / "timpy.sqlite3", timeout=30, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # the node's writes now wait (its busy timeout is 30 s)
    client = subprocess.Popen(
        [sys.executable, "-m", "timpy", "chat", "--url", node.tcp_url, "--user", "alice", "--password", PASSWORD,
         "--to", "alice", "--send", "stuck behind a lock"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while _stats(node)["connections"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the send reaches the node and waits on the lock
    return node, db, client


def test_a_second_sigint_exits_at_once_saying_what_was_cut_short(tmp_path):
    node, db, client = _stuck_drain(tmp_path, timeout=600)
    try:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert node.proc.poll() is None  # draining: the lock holds its writes
        node.proc.send_signal(signal.SIGINT)
        code, _ = wait_exit(node, MARGIN)
        assert code == 1, node.log_text()[-3000:]
        assert "shutdown cut short (a second SIGINT) while " in node.log_text()
    finally:
        db.rollback() if db.in_transaction else None
        db.close()
        client.kill()
        client.wait()


def test_the_bound_passing_exits_with_a_line_saying_so(tmp_path):
    node, db, client = _stuck_drain(tmp_path, timeout=2)
    try:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        code, _ = wait_exit(node, 2 + MARGIN)
        assert code == 1, node.log_text()[-3000:]
        assert "shutdown cut short (shutdown_timeout 2 s passed) while " in node.log_text()
    finally:
        db.close()
        client.kill()
        client.wait()
