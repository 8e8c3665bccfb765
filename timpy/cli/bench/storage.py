"""``timpy bench backend`` and ``timpy bench rebalance``: the SQL backends of
shared-backend mode, measured.

``backend`` runs one real node process on one backend and measures messages
stored per second (1:1 pairs, as ``bench one-node``) and history pages read
per second. ``rebalance`` fills two backends with messages, adds a third, and
reports the time taken, the rows moved and the fraction of keys moved against
the ideal 1/3. Both empty the databases they are given first.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import trio

import timpy
from timpy.cli.bench.common import (
    check_pairs,
    percentile,
    progress_bar,
    run_pairs,
    show,
    start_node_process,
    stop_node_process,
)
from timpy.crypto.keys import ClusterKeys
from timpy.crypto.seal import Sealer
from timpy.im.peers import Peers
from timpy.node.coordinator import BackendCoordinator
from timpy.store import schema
from timpy.store.backends import BackendMap, BackendSpec, redact_url
from timpy.store.engine import url_engine
from timpy.store.repository import Store
from timpy.store.rows import NewMessage
from timpy.store.sharded import ShardedRepository


def empty_database(url: str) -> None:
    engine = url_engine(url)
    try:
        schema.metadata.drop_all(engine)
    finally:
        engine.dispose()


def row_count(repo: ShardedRepository, name: str) -> int:
    from sqlalchemy import func, select

    with repo.backend(name).engine.connect() as conn:
        return sum(
            int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (schema.accounts, schema.conversations, schema.conv_members, schema.messages, schema.inbox)
        )


def _kind(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


async def history_pages(url: str, clients: int, pages: int, limit: int) -> dict:
    """Each client reads its conversation page by page, backwards, over and over."""
    latencies: list[float] = []
    done = 0
    names = [f"bench{i}" for i in range(clients)]

    async def reader(i: int) -> None:
        nonlocal done
        async with timpy.connect(url, names[i], "bench-password", device="reader", sync=False) as c:
            before = 0
            for _ in range(pages):
                t0 = time.perf_counter()
                page = await c.history(names[i ^ 1], before=before, limit=limit)
                latencies.append(time.perf_counter() - t0)
                done += 1
                before = page.messages[0].seq if page.more and page.messages else 0

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(reader, i)
    elapsed = time.perf_counter() - start
    return {
        "history_pages": done,
        "page_size": limit,
        "pages_per_s": round(done / elapsed, 1),
        "page_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "page_p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


async def one_backend(url: str | None, clients: int, messages: int, pages: int) -> dict:
    check_pairs(clients)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'backend.sqlite3'}"
        empty_database(url)
        extra = f'[storage]\nbackends = [{{name = "main", url = "{url}"}}]\n'
        proc, info = await start_node_process(Path(tmp), False, extra)
        try:
            node_url = f"tcp://{info['tcp']}"
            sends = await run_pairs([node_url], clients, messages, [proc.pid])
            reads = await history_pages(node_url, clients, pages, 50)
        finally:
            await stop_node_process(proc)
    return {
        "scenario": f"one node, shared-backend mode on {_kind(url)}",
        "backend": redact_url(url),
        "clients": clients,
        **sends,
        **reads,
        "machine": f"{os.cpu_count()} cores",
    }


async def rebalance(urls: list[str], messages: int, per_conversation: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        urls = urls or [f"sqlite:///{Path(tmp) / f'b{i}.sqlite3'}" for i in (1, 2, 3)]
        if len(urls) != 3:
            raise click.UsageError("give three --url (two to fill, one to add), or none for SQLite files")
        for url in urls:
            empty_database(url)
        specs = [BackendSpec(f"b{i + 1}", u) for i, u in enumerate(urls)]
        repo = ShardedRepository(BackendMap(1, tuple(specs[:2])), Sealer(ClusterKeys.generate().storage))
        store = Store(repo, 8)
        try:
            await store.run(repo.create_schema)
            coordinator = BackendCoordinator(store, Peers.standalone("bench"), "bench", tuple(specs[:2]))
            await coordinator.load()
            convs = max(1, messages // per_conversation)
            users = [os.urandom(16) for _ in range(max(2, convs // 2))]
            with progress_bar() as progress:
                task = progress.add_task("filling two backends", total=messages)
                for start in range(0, len(users), 500):
                    for u in users[start : start + 500]:
                        await store.run(repo.create_account, u, b"hash", b"profile")
                conv_ids = [os.urandom(16) for _ in range(convs)]
                batch: list[NewMessage] = []
                for n in range(messages):
                    c = n % convs
                    a, b = users[c % len(users)], users[(c * 7 + 1) % len(users)]
                    batch.append(NewMessage(conv_ids[c], (a, b), a, os.urandom(16), 1, b"x" * 100))
                    if len(batch) == 1000 or n == messages - 1:
                        await store.run(repo.write_batch, batch)
                        progress.advance(task, len(batch))
                        batch = []
            before = {b.name: await store.run(repo.backend(b.name).key_count) for b in specs[:2]}
            keys_before = sum(c + u for c, u in before.values())
            rows_before = sum([await store.run(row_count, repo, b.name) for b in specs[:2]])
            t0 = time.perf_counter()
            await coordinator.publish(repo.map.start_move(tuple(specs), "bench"))
            await coordinator.rebalancer.run()
            elapsed = time.perf_counter() - t0
            after = {b.name: await store.run(repo.backend(b.name).key_count) for b in specs}
            p = coordinator.rebalancer.progress
        finally:
            store.close()
    moved = sum(after["b3"])
    return {
        "scenario": f"add a third backend to two holding {messages} messages",
        "backends": _kind(urls[0]) if len({_kind(u) for u in urls}) == 1 else "+".join(_kind(u) for u in urls),
        "messages": messages,
        "conversations": convs,
        "users": len(users),
        "seconds": round(elapsed, 2),
        "keys_moved": moved,
        "keys_total": keys_before,
        "moved_fraction": round(moved / keys_before, 4),
        "ideal_fraction": round(1 / 3, 4),
        "rows_total": rows_before,
        "rows_copied": p.rows_copied,
        "rows_copied_fraction": round(p.rows_copied / rows_before, 4),
        "rows_deleted": p.rows_deleted,
        "rows_per_s": round(p.rows_copied / elapsed, 1),
    }


@click.command("backend")
@click.option("--url", help="SQLAlchemy URL of the backend (emptied first); default a SQLite file.")
@click.option("--clients", default=20, show_default=True, help="Clients (even), paired to talk 1:1.")
@click.option("--messages", default=100, show_default=True, help="Messages each client sends.")
@click.option("--pages", default=100, show_default=True, help="History pages (of 50) each client reads.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def backend_cmd(url: str | None, clients: int, messages: int, pages: int, as_json: bool) -> None:
    """One node on one SQL backend: messages stored per second and history pages read per second."""
    show(trio.run(one_backend, url, clients, messages, pages), as_json)


@click.command("rebalance")
@click.option("--url", "urls", multiple=True, help="Three backend URLs (emptied first); default SQLite files.")
@click.option("--messages", default=100_000, show_default=True)
@click.option("--per-conversation", default=20, show_default=True, help="Messages per conversation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rebalance_cmd(urls: tuple[str, ...], messages: int, per_conversation: int, as_json: bool) -> None:
    """Fill two backends, add a third: time, rows moved, moved fraction against 1/3."""
    show(trio.run(rebalance, list(urls), messages, per_conversation), as_json)
