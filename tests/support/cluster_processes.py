"""Clusters of real ``timpy node`` processes on loopback, shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import NodeProcess
from timpy.crypto.keys import ClusterKeys, decode_key

# Fast failure detection and repair for tests.
FAST = "probe_interval = 0.2\nprobe_timeout = 0.1\npush_pull_interval = 2.0\nanti_entropy_interval = 5.0\n"


def start_cluster(tmp_path: Path) -> tuple[list[NodeProcess], ClusterKeys]:
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    nodes: list[NodeProcess] = []
    for i in range(3):
        work = tmp_path / f"n{i}"
        work.mkdir()
        join = f'join = ["{nodes[0].info["peer"]}"]\n' if nodes else ""
        nodes.append(NodeProcess(work, top_toml=f'cluster_key_file = "{key}"\n', cluster_toml=FAST + join).start())
    return nodes, ClusterKeys(decode_key(key.read_text(), str(key)))


async def wait_members(url_peer: str, key: Path, count: int) -> None:
    from timpy.cli.cluster import ask_node

    with trio.fail_after(60):
        while True:
            info = await ask_node(url_peer, key)
            own = info.get("ownership", {})  # the ring a majority accepted, and this node's lease
            if sum(m["state"] == "alive" for m in info["members"]) == count and own.get("lease") and len(
                own.get("ring_members", ())
            ) == count:
                return
            await trio.sleep(0.1)
