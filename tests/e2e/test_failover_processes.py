"""Client failover with real ``timpy node`` processes: a client given two
nodes' URLs goes on through the second when the first is killed (SIGKILL),
logs in again, resumes its inbox, and every send is stored once; the
interactive ``timpy chat`` notices at once and says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import trio

import timpy
from tests.conftest import PASSWORD
from tests.support.cluster_processes import start_cluster, wait_members

pytestmark = pytest.mark.e2e
MESSAGES = 60
INTERNAL_NAME = re.compile(r"\b(acct|conv|inbox|group|term|copies|route|presence)\.[a-z_]+")


async def test_a_client_fails_over_to_the_next_node_and_every_send_is_stored_once(tmp_path):
    nodes, _ = start_cluster(tmp_path)
    try:
        for n in nodes:
            await wait_members(n.info["peer"], tmp_path / "cluster.key", 3)
        first, second, third = nodes
        await timpy.register(third.tcp_url, "alice", PASSWORD)
        await timpy.register(third.tcp_url, "bob", PASSWORD)
        statuses: list[str] = []
        acks: dict[int, int] = {}
        received: list[bytes] = []
        with trio.fail_after(120):
            async with timpy.connect([first.tcp_url, second.ws_url], "alice", PASSWORD, device="laptop",
                                     on_status=statuses.append) as a, \
                    timpy.connect([third.tcp_url, second.tcp_url], "bob", PASSWORD, device="phone") as b:
                assert a.url == first.tcp_url

                async def receive() -> None:
                    while len(received) < MESSAGES:
                        received.append((await b.next_message(timeout=60)).body)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    for i in range(MESSAGES):
                        if i == MESSAGES // 3:
                            first.proc.send_signal(signal.SIGKILL)
                        for _ in range(100):  # the node may say UNAVAILABLE while the cluster notices the death
                            try:
                                ack = await a.send("bob", f"msg {i}", client_id=f"alice-{i}")
                                break
                            except timpy.RemoteError as exc:
                                assert exc.code == timpy.Code.UNAVAILABLE, exc
                                assert not INTERNAL_NAME.search(exc.text), exc.text  # plain words
                                await trio.sleep(0.2)
                        else:
                            raise AssertionError(f"msg {i} was never acknowledged")
                        acks[i] = ack.seq
                        await trio.sleep(0.01)
                assert a.reconnects == 1 and a.url == second.ws_url, statuses
                assert any("lost the connection" in s for s in statuses)
                assert any(s.startswith("reconnected to") for s in statuses)
                page = await b.history("alice", after=0, limit=200)
        bodies = [m.body for m in page.messages]
        assert bodies == [f"msg {i}".encode() for i in range(MESSAGES)]  # each once, in order
        assert [m.seq for m in page.messages] == list(range(1, MESSAGES + 1))  # gap-free
        assert sorted(received) == sorted(bodies)  # delivered to bob once each
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()


async def _read_until(proc: trio.Process, seen: bytearray, marker: bytes, timeout: float) -> None:
    assert proc.stdout is not None
    with trio.fail_after(timeout):
        while marker not in seen:
            data = await proc.stdout.receive_some(4096)
            if not data:
                raise AssertionError(f"chat ended before {marker!r}:\n{seen.decode(errors='replace')}")
            seen += data


async def test_interactive_chat_notices_a_dead_node_at_once_and_reconnects(tmp_path):
    nodes, _ = start_cluster(tmp_path)
    try:
        for n in nodes:
            await wait_members(n.info["peer"], tmp_path / "cluster.key", 3)
        first, second, _ = nodes
        await timpy.register(second.tcp_url, "carol", PASSWORD)
        await timpy.register(second.tcp_url, "dave", PASSWORD)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "timpy", "chat", "--url", first.tcp_url, "--url", second.tcp_url,
             "--user", "carol", "--password", PASSWORD, "--to", "dave"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        seen = bytearray()
        try:
            await _read_until(proc, seen, b"logged in as carol", 30)
            first.proc.send_signal(signal.SIGKILL)
            # Nobody types: the chat notices the closed connection by itself.
            await _read_until(proc, seen, b"lost the connection to " + first.tcp_url.encode(), 30)
            await _read_until(proc, seen, b"reconnected to " + second.tcp_url.encode(), 60)
            assert proc.stdin is not None
            for _ in range(20):  # the cluster may answer UNAVAILABLE while it notices the death
                await proc.stdin.send_all(b"hello after the failover\n")
                before = len(seen)
                await _read_until(proc, seen, b"\n", 30)
                with trio.move_on_after(30):
                    while b"(sent #" not in seen[before:] and b"error:" not in seen[before:]:
                        data = await proc.stdout.receive_some(4096)
                        if not data:
                            break
                        seen += data
                if b"(sent #" in seen[before:]:
                    break
                await trio.sleep(0.5)
            assert b"(sent #1)" in seen, seen.decode(errors="replace")
            await proc.stdin.send_all(b"/quit\n")
            with trio.fail_after(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        async with timpy.connect(second.tcp_url, "dave", PASSWORD) as d:
            page = await d.history("carol")
            assert [m.body for m in page.messages] == [b"hello after the failover"]
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()


def test_chat_refuses_urls_it_cannot_use_in_one_line():
    for url in ("http://127.0.0.1:7070", "127.0.0.1:7070", "tcp://127.0.0.1"):
        done = subprocess.run([sys.executable, "-m", "timpy", "chat", "--url", url, "--user", "a", "--password", "b",
                               "--send", "x", "--to", "b"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "tcp://" in lines[0] and "tcps://" in lines[0] and "wss://" in lines[0], done.stderr
