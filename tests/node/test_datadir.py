"""The data directory lock: one running node per data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import timpy
from tests.conftest import node_config
from timpy.errors import ConfigError
from timpy.node.datadir import DataDirLock


def test_second_lock_on_a_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    assert (tmp_path / "data" / "node.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(ConfigError) as err:
        DataDirLock(tmp_path / "data").acquire()
    assert f"pid {os.getpid()}" in err.value.text and "--data" in err.value.text
    first.release()
    with DataDirLock(tmp_path / "data") as again:  # free once released
        assert again.held


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    """The OS drops the lock with its process: a stale lock file is no obstacle."""
    script = (
        "import sys, time; from pathlib import Path; from timpy.node.datadir import DataDirLock\n"
        "DataDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert (tmp_path / "node.lock").read_text().strip() == str(proc.pid)  # left behind by the killed process
    with DataDirLock(tmp_path) as lock:
        assert lock.held


async def test_two_nodes_in_one_process_on_one_directory(tmp_path: Path) -> None:
    config = node_config(memory=False, data_dir=tmp_path / "data")
    async with timpy.open_node(config) as first:
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            async with timpy.open_node(config):
                pass
        assert first.ready  # the refused node changed nothing for the running one
        await timpy.register(first.tcp_url, "alice", "correct-horse")
    async with timpy.open_node(config) as again:  # released on exit
        assert again.node_id == first.node_id
        async with timpy.connect(again.tcp_url, "alice", "correct-horse"):
            pass


async def test_the_stamp_floor_is_kept_in_the_data_directory_above_every_stored_stamp(tmp_path: Path) -> None:
    """docs/consistency.md, "Epochs on rows": a restarted node starts its row
    stamps above every one it gave before, whatever its clock says."""
    from sqlalchemy import func, select

    from timpy.store import schema
    from timpy.store.stamp_floor import FILE, StampFloor

    config = node_config(memory=False, data_dir=tmp_path / "data")
    for run in range(2):
        async with timpy.open_node(config) as node:
            if run == 0:
                await timpy.register(node.tcp_url, "alice", "correct-horse")
                await timpy.register(node.tcp_url, "bob", "correct-horse")
            async with timpy.connect(node.tcp_url, "alice", "correct-horse") as alice:
                await alice.send("bob", f"run {run}")
            with node.store.repo.engine.connect() as conn:
                top = conn.execute(select(func.max(schema.messages.c.epoch))).scalar_one()
            floor = StampFloor(tmp_path / "data" / FILE).value
            assert top and floor >= top


async def test_a_node_on_a_file_checkpoints_its_wal_in_the_background_and_stops_with_it(tmp_path: Path) -> None:
    import trio

    config = node_config(memory=False, data_dir=tmp_path / "data")
    async with timpy.open_node(config) as node:
        checkpointer = node.checkpointer
        assert checkpointer is not None and checkpointer.path == tmp_path / "data" / "timpy.sqlite3"
        await timpy.register(node.tcp_url, "alice", "correct-horse")
        await timpy.register(node.tcp_url, "bob", "correct-horse")
        async with timpy.connect(node.tcp_url, "alice", "correct-horse") as alice:
            for n in range(5):
                await alice.send("bob", f"hello {n}")
        with trio.fail_after(20):  # bounded: a checkpoint every quarter of a second
            while checkpointer.pages == 0:
                await trio.sleep(0.05)
    assert checkpointer._conn is None  # closed with the node, before its store
    async with timpy.open_node(node_config()) as memory:
        assert memory.checkpointer is None  # nothing to checkpoint in memory
