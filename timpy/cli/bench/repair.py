"""``timpy bench repair``: what one repair pass costs between replicas.

Three nodes in this process over loopback peer channels (R = 3, so each
holds every key), storage in memory or SQLite files. The same conversations
(and their members' inboxes) are stored on all three, as replication would
leave them; then a pass on one node is timed twice: with equal replicas (the
cost of comparing), and after random rows were deleted on another replica
(the cost of finding and copying them back).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import click
import trio
from sqlalchemy import and_, delete, select

import timpy
from timpy.cli.bench.common import show
from timpy.config import AdminConfig, ClusterConfig, NodeConfig, SecurityConfig
from timpy.crypto.keys import ClusterKeys
from timpy.store import schema as s
from timpy.store.rows import NewMessage


def _seed(node: timpy.Node, conversations: int, messages: int, rng: random.Random) -> list[bytes]:
    """Store the conversations on ``node``: ``messages`` each between two users."""
    repo = node.store.repo
    users = [rng.randbytes(16) for _ in range(conversations * 2)]
    for u in users:
        repo.create_account(u, b"secret", b"profile")
    batch: list[NewMessage] = []
    for c in range(conversations):
        conv, a, b = rng.randbytes(16), users[2 * c], users[2 * c + 1]
        for k in range(messages):
            batch.append(NewMessage(conv, (a, b), a, rng.randbytes(16), 1_700_000_000_000 + k, b"x" * 40))
            if len(batch) == 512:
                repo.write_batch(batch)
                batch = []
    if batch:
        repo.write_batch(batch)
    return users


def _copy_all(source: timpy.Node, target: timpy.Node) -> None:
    """Give ``target`` what replication would have: every key's rows, sealed as stored."""
    src, dst = source.store.repo, target.store.repo
    for kind, copy in (("conv", src.conversation_copies), ("user", src.user_copies)):
        for key in src.repair_keys(kind, b"", None, 10_000_000):
            dst.apply_copies(copy(key, 0, 10_000_000))


def _damage(node: timpy.Node, fraction: float, rng: random.Random) -> int:
    m, i = s.messages, s.inbox
    deleted = 0
    with node.store.repo.engine.begin() as conn:
        for table, cols in ((m, (m.c.conv_id, m.c.seq)), (i, (i.c.user_id, i.c.pos))):
            rows = list(conn.execute(select(*cols)))
            for a, b in rng.sample(rows, int(len(rows) * fraction)):
                deleted += conn.execute(delete(table).where(and_(cols[0] == a, cols[1] == b))).rowcount
    return deleted


async def _quiet(nodes: list[timpy.Node]) -> None:
    """Wait until no node runs a pass and none started one for 2.5 s (a
    membership change starts one after a 1 s settle)."""
    with trio.fail_after(60):
        seen: list[int] = []
        quiet_since = trio.current_time()
        while True:
            now = [n.replicator.progress.passes for n in nodes]
            busy = any(n.replicator.progress.running or not n.replicator.progress.passes for n in nodes)
            if busy or now != seen:
                seen, quiet_since = now, trio.current_time()
            elif trio.current_time() - quiet_since >= 2.5:
                return
            await trio.sleep(0.05)


async def repair_figures(conversations: int, messages: int, damage: float, memory: bool) -> dict:
    rng = random.Random(1)
    keys = ClusterKeys.generate()
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        async with AsyncExitStack() as stack:
            nodes: list[timpy.Node] = []
            for n in range(3):
                config = NodeConfig(
                    memory=memory, data_dir=Path(tmp) / f"n{n}", listen=None, ws=None,
                    security=SecurityConfig(password_opslimit=1, password_memlimit=8192),
                    admin=AdminConfig(listen=None),
                    cluster=ClusterConfig(listen="127.0.0.1:0", replicas=3, write_quorum=2,
                                          anti_entropy_interval=86_400.0,
                                          join=(nodes[0].peer_address,) if nodes else ()),
                )
                nodes.append(await stack.enter_async_context(timpy.open_node(config, keys=keys)))
            with trio.fail_after(60):
                while not all(len(n.peers.placement.members) == 3 for n in nodes):
                    await trio.sleep(0.05)
            await _quiet(nodes)  # the passes the ring changes started, before any data
            await nodes[0].store.run(_seed, nodes[0], conversations, messages, rng)
            for target in nodes[1:]:
                await target.store.run(_copy_all, nodes[0], target)
            p = nodes[0].replicator.progress
            started = time.perf_counter()
            await nodes[0].replicator.repair_pass()
            equal_s = time.perf_counter() - started
            keys_checked = p.keys_checked
            await _quiet(nodes)  # no pass of another node's own may overlap the timed one
            deleted = await trio.to_thread.run_sync(_damage, nodes[1], damage, rng)
            rows_before = p.rows_repaired
            started = time.perf_counter()
            await nodes[0].replicator.repair_pass()
            damaged_s = time.perf_counter() - started
            return {
                "scenario": f"3 nodes in one process, R=3; {conversations} conversations of {messages} messages "
                            f"({2 * conversations} users)",
                "storage": "memory" if memory else "sqlite (synchronous=FULL)",
                "keys_per_node": keys_checked,
                "rows_per_node": conversations * messages * 3,
                "pass_equal_s": round(equal_s, 2),
                "rows_deleted_on_one_replica": deleted,
                "pass_after_damage_s": round(damaged_s, 2),
                "rows_repaired": p.rows_repaired - rows_before,
                "machine": f"{os.cpu_count()} cores, the three nodes in one process",
            }


@click.command("repair")
@click.option("--conversations", default=1000, show_default=True, help="1:1 conversations stored.")
@click.option("--messages", default=20, show_default=True, help="Messages in each conversation.")
@click.option("--damage", default=0.01, show_default=True, help="Fraction of rows deleted on one replica.")
@click.option("--memory", is_flag=True, help="Keep the nodes' data in memory instead of SQLite files.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def repair_cmd(conversations: int, messages: int, damage: float, memory: bool, as_json: bool) -> None:
    """One repair pass between three replicas: with equal copies, then after damage."""
    show(trio.run(repair_figures, conversations, messages, damage, memory), as_json)
