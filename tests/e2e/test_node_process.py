"""End to end: real ``timpy node`` processes, driven as a user would."""

import json
import signal
import sqlite3
import subprocess
import sys

import pytest
import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess

pytestmark = pytest.mark.e2e


def test_chat_through_a_real_node(node_process):
    async def main() -> None:
        url = node_process.tcp_url
        await timpy.register(url, "alice", PASSWORD)
        await timpy.register(node_process.ws_url, "bob", PASSWORD)
        async with timpy.connect(url, "alice", PASSWORD) as a, timpy.connect(node_process.ws_url, "bob", PASSWORD) as b:
            for i in range(20):
                await a.send("bob", f"hello {i}")
            got = [await b.next_message(timeout=10) for _ in range(20)]
            assert [m.body for m in got] == [f"hello {i}".encode() for i in range(20)]

    trio.run(main)
    assert "ready" in node_process.log_text() and "tcp://" in node_process.log_text()


def test_restart_keeps_history_and_undelivered_messages(tmp_path):
    node = NodeProcess(tmp_path).start()

    async def before() -> None:
        await timpy.register(node.tcp_url, "alice", PASSWORD)
        await timpy.register(node.tcp_url, "bob", PASSWORD)
        async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as b:
            await b.wait_synced()  # bob's phone exists, then goes away
        async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
            for i in range(25):
                await a.send("bob", f"m{i}")

    trio.run(before)
    assert node.stop(signal.SIGTERM) == 0
    node.start()  # same data directory, same key file

    async def after() -> None:
        async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as b:
            got = [await b.next_message(timeout=10) for _ in range(25)]
            assert [m.body for m in got] == [f"m{i}".encode() for i in range(25)]
            page = await b.history("alice", limit=100)
            assert [m.seq for m in page.messages] == list(range(1, 26))
            ack = await b.send("alice", "back")
            assert ack.seq == 26  # the sequence goes on with no gap and no reuse

    trio.run(after)
    node.stop()


def test_sigint_during_traffic_loses_nothing_acknowledged(tmp_path):
    node = NodeProcess(tmp_path).start()
    acked: list[int] = []

    async def traffic() -> None:
        await timpy.register(node.tcp_url, "alice", PASSWORD)
        await timpy.register(node.tcp_url, "bob", PASSWORD)
        async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
            with trio.move_on_after(20):
                for i in range(100_000):
                    if i == 50:
                        node.proc.send_signal(signal.SIGINT)
                    try:
                        ack = await a.send("bob", f"m{i}", client_id=f"c{i}")
                    except timpy.RemoteError:
                        break
                    acked.append(ack.seq)

    trio.run(traffic)
    assert node.proc.wait(timeout=30) == 0
    assert len(acked) >= 50
    node.log.close()
    node.start()

    async def check() -> None:
        async with timpy.connect(node.tcp_url, "bob", PASSWORD) as b:
            page = await b.history("alice", limit=200)
            stored = [m.seq for m in page.messages]
            assert set(acked) <= set(stored)
            assert stored == list(range(1, len(stored) + 1))

    trio.run(check)
    node.stop()


def test_chat_command(node_process):
    url = node_process.tcp_url

    def chat(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "timpy", "chat", "--url", url, "--password", PASSWORD, *args],
            capture_output=True, text=True, timeout=60,
        )

    assert chat("--user", "alice", "--register").returncode == 0
    assert chat("--user", "bob", "--register").returncode == 0
    sent = chat("--user", "alice", "--to", "bob", "--send", "hi from the terminal")
    assert sent.returncode == 0 and "sent #1" in sent.stdout
    hist = chat("--user", "bob", "--to", "alice", "--history", "10")
    assert "alice -> bob: hi from the terminal" in hist.stdout
    bad = chat("--user", "bob", "--to", "nobody", "--send", "x")
    assert bad.returncode != 0 and "no such user" in bad.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "timpy", "chat", "--url", url, "--user", "bob", "--password", "nope-nope-nope", "--listen", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert wrong.returncode != 0 and "wrong user name or password" in wrong.stderr


def test_nothing_readable_in_the_database_file(node_process, tmp_path):
    async def main() -> None:
        await timpy.register(node_process.tcp_url, "zebulon", PASSWORD)
        await timpy.register(node_process.tcp_url, "quentin", PASSWORD)
        async with timpy.connect(node_process.tcp_url, "zebulon", PASSWORD) as z:
            await z.send("quentin", "meet at the old lighthouse")

    trio.run(main)
    node_process.stop()
    data = tmp_path / "data"
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file() and p.name != "cluster.key")
    for secret in (b"zebulon", b"quentin", b"lighthouse", PASSWORD.encode()):
        assert secret not in raw, secret
    # and through SQL: every text/blob column, every row
    db = sqlite3.connect(data / "timpy.sqlite3")
    for (table,) in db.execute("select name from sqlite_master where type='table'"):
        for row in db.execute(f"select * from {table}"):
            blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
            for secret in (b"zebulon", b"quentin", b"lighthouse"):
                assert secret not in blob, (table, secret)
    assert (data / "cluster.key").stat().st_mode & 0o777 == 0o600


def test_memory_mode_writes_no_database(tmp_path):
    node = NodeProcess(tmp_path, ("--memory",)).start()

    async def main() -> None:
        await timpy.register(node.tcp_url, "alice", PASSWORD)
        async with timpy.connect(node.tcp_url, "alice", PASSWORD) as a:
            await a.send("alice", "note to self")

    trio.run(main)
    node.stop()
    assert not list(tmp_path.rglob("*.sqlite3*"))


def test_bad_configuration_says_what_to_do(tmp_path):
    (tmp_path / "bad.toml").write_text('listen = "nonsense"\n')
    r = subprocess.run([sys.executable, "-m", "timpy", "node", "--config", str(tmp_path / "bad.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "HOST:PORT" in r.stderr
    (tmp_path / "key").write_text("garbage\n")
    (tmp_path / "key").chmod(0o600)
    (tmp_path / "k.toml").write_text(f'cluster_key_file = "{tmp_path / "key"}"\nlisten = "127.0.0.1:0"\nws = "off"\n')
    r = subprocess.run([sys.executable, "-m", "timpy", "node", "--config", str(tmp_path / "k.toml"), "--data", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cluster key" in r.stderr


async def test_json_logs_carry_the_node_id_and_no_secret_and_the_admin_api_answers(tmp_path):
    import urllib.request

    node = NodeProcess(tmp_path, ("--log-json",)).start()
    try:
        await timpy.register(node.tcp_url, "alice", "a-very-secret-password")
        async with timpy.connect(node.tcp_url, "alice", "a-very-secret-password") as alice:
            await alice.send("alice", "the body nobody may log")
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        assert oct((tmp_path / "data" / "admin.token").stat().st_mode & 0o777) == "0o600"
        admin = f"http://{node.info['admin']}"

        def get(path: str, auth: bool = True) -> bytes:
            headers = {"Authorization": f"Bearer {token}"} if auth else {}
            with urllib.request.urlopen(urllib.request.Request(admin + path, headers=headers), timeout=10) as r:
                return r.read()

        assert json.loads(await trio.to_thread.run_sync(get, "/health", False))["node"] == node.info["node_id"]
        assert b"timpy_messages_in_total 1.0" in await trio.to_thread.run_sync(get, "/metrics")
    finally:
        assert node.stop() == 0
    lines = [line for line in node.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {r["node"] for r in records if "ready" in r["msg"]} == {node.info["node_id"]}
    assert any("user logged in" in r["msg"] for r in records)
    text = node.log_text()
    for secret in ("a-very-secret-password", "the body nobody may log", token):
        assert secret not in text


def test_second_node_on_the_same_data_directory_refuses_to_start(tmp_path):
    first = NodeProcess(tmp_path).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "timpy", "node", "--config", str(tmp_path / "node.toml")],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0
        assert f"pid {first.proc.pid}" in second.stderr and "--data" in second.stderr, second.stderr
        assert first.proc.poll() is None  # the running node is untouched

        async def still_serves() -> None:
            await timpy.register(first.tcp_url, "alice", PASSWORD)

        trio.run(still_serves)
    finally:
        assert first.stop(signal.SIGTERM) == 0
    first.start()  # the directory is free again once the first node stopped
    first.stop()
