"""A node on shared SQL backends, and a backend added while it runs.

Here the backends are SQLite files in a temporary directory; in production
they are PostgreSQL or MariaDB URLs (see docs/storage.md).

Run: python examples/shared_backends.py
"""

import tempfile
from pathlib import Path

import trio

import timpy


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = {name: f"sqlite:///{Path(tmp) / name}.sqlite3" for name in ("b1", "b2", "b3")}
        config = timpy.NodeConfig(
            data_dir=Path(tmp) / "node",
            listen="127.0.0.1:0",
            ws="off",
            cluster=timpy.ClusterConfig(listen=None),  # standalone; nodes of a cluster share the same backends
            storage=timpy.StorageConfig(backends=(timpy.BackendSpec("b1", url["b1"]), timpy.BackendSpec("b2", url["b2"]))),
        )
        async with timpy.open_node(config) as node:
            await timpy.register(node.tcp_url, "alice", "alice-password")
            await timpy.register(node.tcp_url, "bob", "bob-password")
            async with timpy.connect(node.tcp_url, "alice", "alice-password") as alice:
                for i in range(20):
                    await alice.send("bob", f"message {i}")
                await node.backends.add("b3", url["b3"])  # what `timpy backend add b3 URL` asks a node to do
                status = await node.backends.wait_moved()
                progress = status["progress"]
                print(f"backend map version {status['version']}: {[b['name'] for b in status['backends']]}")
                print(f"moved {progress['keys_moving']} keys, {progress['rows_copied']} rows copied")
                page = await alice.history("bob", limit=50)
                print(f"history still has {len(page.messages)} messages, seq {page.messages[0].seq}..{page.messages[-1].seq}")
                assert [m.seq for m in page.messages] == list(range(1, 21))


trio.run(main)
