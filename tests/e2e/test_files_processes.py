"""Files across three real ``timpy node`` processes: a 20 MiB file uploaded
through one node and downloaded through another after the attachment's owner
was killed with SIGKILL; no file content in any node's SQLite files."""

from __future__ import annotations

import hashlib
import os
import signal

import trio

import timpy
from tests.conftest import PASSWORD
from tests.support.cluster_processes import start_cluster, wait_members
from timpy.cluster.ring import HashRing

MARKER = b"E2E-FILE-MARKER-c0ffee"
SIZE = 20 * 1024 * 1024


async def test_a_20_mib_file_survives_its_owner_killed(tmp_path):
    block = MARKER + os.urandom(1024 - len(MARKER))
    data = block * (SIZE // len(block))
    nodes, _ = start_cluster(tmp_path)
    try:
        for n in nodes:
            await wait_members(n.info["peer"], tmp_path / "cluster.key", 3)
        await timpy.register(nodes[0].tcp_url, "alice", PASSWORD)
        await timpy.register(nodes[0].tcp_url, "bob", PASSWORD)
        path = tmp_path / "big.bin"
        path.write_bytes(data)
        ring = HashRing.of([n.info["node_id"] for n in nodes])
        with trio.fail_after(300):
            async with timpy.connect(nodes[0].tcp_url, "alice", PASSWORD, sync=False) as alice:
                att = await alice.upload(path)
                assert att.size == SIZE and att.sha256 == hashlib.sha256(data).hexdigest()
                await alice.send_file(att, to="bob")
        owner = next(n for n in nodes if n.info["node_id"] == ring.owner(bytes.fromhex(att.id)))
        others = [n for n in nodes if n is not owner]
        for n in nodes:
            for f in n.workdir.rglob("*.sqlite3*"):
                assert MARKER not in f.read_bytes(), f
        owner.stop(signal.SIGKILL)
        for n in others:  # the survivors declare it dead and take over its keys
            await wait_members(n.info["peer"], tmp_path / "cluster.key", 2)
        with trio.fail_after(300):
            async with timpy.connect(others[1].tcp_url, "bob", PASSWORD, sync=False) as bob:
                got = await bob.download(att.id, tmp_path / "got.bin")
        assert got.read_bytes() == data
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
