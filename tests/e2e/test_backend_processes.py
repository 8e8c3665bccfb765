"""Shared-backend mode with real processes: two ``timpy node`` processes on
the same backends, ``timpy backend add`` run as an operator would while a
client keeps sending, then ``timpy backend status`` from the other node."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess
from tests.support.cluster_processes import FAST, wait_members


def timpy_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timpy", *args], capture_output=True, text=True, timeout=120)


async def test_backend_add_from_the_command_line_under_traffic(tmp_path):
    key = tmp_path / "cluster.key"
    assert timpy_cmd("keys", "new", str(key)).returncode == 0
    urls = {name: f"sqlite:///{tmp_path / (name + '.sqlite3')}" for name in ("b1", "b2", "b3")}
    backends = ("--backend", f"b1={urls['b1']}", "--backend", f"b2={urls['b2']}")
    nodes: list[NodeProcess] = []
    try:
        for i in range(2):
            work = tmp_path / f"n{i}"
            work.mkdir()
            join = f'join = ["{nodes[0].info["peer"]}"]\n' if nodes else ""
            nodes.append(
                NodeProcess(work, backends, top_toml=f'cluster_key_file = "{key}"\n', cluster_toml=FAST + join).start()
            )
        for n in nodes:
            await wait_members(n.info["peer"], key, 2)
        await timpy.register(nodes[0].tcp_url, "alice", PASSWORD)
        await timpy.register(nodes[1].tcp_url, "bob", PASSWORD)
        sent: list[str] = []
        stop = trio.Event()

        async def keep_sending() -> None:
            async with timpy.connect(nodes[0].tcp_url, "alice", PASSWORD) as alice:
                for i in range(10_000):  # bounded; ends at ``stop``
                    if stop.is_set():
                        return
                    for attempt in range(20):
                        try:
                            await alice.send("bob", f"m{i}", client_id=f"m{i}")
                            break
                        except timpy.RemoteError as exc:
                            assert exc.code == timpy.Code.UNAVAILABLE and attempt < 19
                            await trio.sleep(0.1)
                    sent.append(f"m{i}")
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending)
            await trio.sleep(1.0)
            added = await trio.to_thread.run_sync(
                timpy_cmd, "backend", "add", "b3", urls["b3"], "--peer", nodes[1].info["peer"], "--cluster-key", str(key)
            )
            await trio.sleep(0.5)
            stop.set()
        assert added.returncode == 0, added.stderr
        assert "done: map version" in added.stdout and "keys moved" in added.stdout

        status = timpy_cmd("backend", "status", "--peer", nodes[0].info["peer"], "--cluster-key", str(key), "--json")
        info = json.loads(status.stdout)
        assert [b["name"] for b in info["backends"]] == ["b1", "b2", "b3"] and info["move"] is None
        assert all(b["up"] for b in info["backends"])
        table = timpy_cmd("backend", "status", "--peer", nodes[1].info["peer"], "--cluster-key", str(key))
        assert table.returncode == 0 and "b3" in table.stdout and "version" in table.stdout

        again = timpy_cmd("backend", "add", "b4", urls["b3"], "--peer", nodes[0].info["peer"], "--cluster-key", str(key))
        assert again.returncode != 0 and "has that URL already" in again.stderr
        missing = timpy_cmd("backend", "remove", "b9", "--peer", nodes[0].info["peer"], "--cluster-key", str(key))
        assert missing.returncode != 0 and "no backend named" in missing.stderr

        async with timpy.connect(nodes[1].tcp_url, "bob", PASSWORD, sync=False) as bob:
            page = await bob.history("alice", after=0, limit=200)
            got = list(page.messages)
            while page.more and len(got) < 10_000:
                page = await bob.history("alice", after=got[-1].seq, limit=200)
                got += page.messages
        assert [m.body.decode() for m in got] == sent and len(sent) > 20
        assert [m.seq for m in got] == list(range(1, len(sent) + 1))
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
