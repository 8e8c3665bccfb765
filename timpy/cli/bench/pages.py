"""``timpy bench pages``: what a stored history costs a write batch, in pages.

Stores ``--history`` messages between random pairs of ``--users`` users in a
SQLite file (through ``Repository.write_batch``, indexed for search as a node
indexes them), then writes one batch of ``--batch`` new 1:1 messages between
random pairs, as under a flood, and indexes it. Every page the batch and its
indexing append to the write-ahead log is mapped to the table or index it
belongs to (SQLite's ``dbstat``): with a long history each message lands in
parts of the trees no other message of its batch touches, and every page
dirtied is written at the commit and again at the checkpoint. Reports pages
per message by table or index, and the batch's time.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from timpy.cli.bench.common import progress_bar, show
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys
from timpy.crypto.seal import Sealer
from timpy.im import ids, kinds
from timpy.im.search import INDEX_BATCH, plan_for, token_key
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import KIND_NORMAL, pack_content

_WAL_HEADER = 32
_FRAME_HEADER = 24


def wal_pages(wal: Path) -> list[int]:
    """The page number of every valid frame in a WAL file, in order (frames
    whose salts are not the header's are left over from before it restarted)."""
    if not wal.exists():
        return []
    data = wal.read_bytes()
    if len(data) < _WAL_HEADER:
        return []
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    out: list[int] = []
    at = _WAL_HEADER
    while at + _FRAME_HEADER + page_size <= len(data):
        if data[at + 8:at + 16] != salts:
            break
        out.append(struct.unpack(">I", data[at:at + 4])[0])
        at += _FRAME_HEADER + page_size
    return out


def _messages(indexer: BlindIndexer, names: list[str], uids: list[bytes], rng: random.Random, count: int,
              tag: str) -> list[NewMessage]:
    out = []
    for k in range(count):
        a, b = rng.sample(range(len(uids)), 2)
        client_id = f"{tag}{k}-{rng.getrandbits(48):012x}"
        body = " ".join(rng.choice(("hello", "lunch", "tomorrow", "meeting", "otter", "thanks", "ok")) for _ in range(4))
        out.append(NewMessage(
            conv_id=ids.direct_conversation(indexer, uids[a], uids[b]), members=(uids[a], uids[b]),
            sender_id=uids[a], dedup=ids.dedup_index(indexer, uids[a], client_id), created_ms=int(time.time() * 1000),
            content=pack_content(client_id, names[a], names[b], KIND_NORMAL, body.encode(), {}),
        ))
    return out


def _index(repo: Repository, indexer: BlindIndexer, convs: list[bytes]) -> None:
    work = [(c, plan_for(token_key(indexer, c))) for c in convs]
    for _ in range(1_000_000):  # bounded: each round indexes up to INDEX_BATCH messages
        if not work:
            return
        left = set(repo.search_index_many(work[:200], INDEX_BATCH))
        work = [w for w in work[:200] if w[0] in left] + work[200:]


def run(history: int, users: int, batch: int, seed: int) -> dict:
    if users < 2:
        raise click.UsageError("--users must be at least 2")
    if batch < 1:
        raise click.UsageError("--batch must be at least 1")
    rng = random.Random(seed)
    keys = ClusterKeys.generate()
    indexer = BlindIndexer(keys.index)
    names = [f"u{i}" for i in range(1, users + 1)]
    uids = [ids.user_id(indexer, n) for n in names]
    with tempfile.TemporaryDirectory(prefix="timpy-pages-") as tmp:
        db = Path(tmp) / "timpy.sqlite3"
        repo = Repository(sqlite_engine(db), Sealer(keys.storage), kinds.effect_of)
        try:
            repo.create_schema()
            for u in uids:
                repo.create_account(u, b"hash", b"profile")
            with progress_bar() as progress:
                task = progress.add_task("storing the history", total=history)
                done = 0
                while done < history:
                    chunk = _messages(indexer, names, uids, rng, min(2000, history - done), f"h{done}-")
                    repo.write_batch(chunk)
                    _index(repo, indexer, sorted({m.conv_id for m in chunk}))
                    done += len(chunk)
                    progress.update(task, completed=done)
            with repo.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            wal = Path(str(db) + "-wal")
            new = _messages(indexer, names, uids, rng, batch, "n-")
            t0 = time.perf_counter()
            repo.write_batch(new)
            t1 = time.perf_counter()
            written = wal_pages(wal)
            _index(repo, indexer, sorted({m.conv_id for m in new}))
            t2 = time.perf_counter()
            indexed = wal_pages(wal)[len(written):]
        finally:
            repo.close()
        with sqlite3.connect(db) as conn:
            try:
                owner = {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
            except sqlite3.OperationalError:
                raise click.ClickException("this Python's SQLite has no dbstat table: pages cannot be named") from None
    result: dict = {
        "scenario": f"one batch of {batch} 1:1 messages on a SQLite file holding {history:,} messages of {users} users",
        "history": history,
        "batch": batch,
    }
    for label, frames in (("write_batch", written), ("search_indexing", indexed)):
        pages = set(frames)
        by = Counter(owner.get(p, "(freed)") for p in pages)
        result[f"{label}_pages"] = len(pages)
        result[f"{label}_pages_per_message"] = round(len(pages) / batch, 2)
        result[f"{label}_by_tree"] = dict(by.most_common())
    result["write_batch_ms"] = round(1000 * (t1 - t0), 1)
    result["search_indexing_ms"] = round(1000 * (t2 - t1), 1)
    result["machine"] = f"{os.cpu_count()} cores"
    return result


@click.command("pages")
@click.option("--history", default=100_000, show_default=True, help="Messages stored before the batch.")
@click.option("--users", default=200, show_default=True, help="Users the messages are between (random pairs).")
@click.option("--batch", default=500, show_default=True, help="New messages in the measured batch.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pages_cmd(history: int, users: int, batch: int, seed: int, as_json: bool) -> None:
    """Pages a write batch and its search indexing dirty, by table and index, after a stored history."""
    result = run(history, users, batch, seed)
    if as_json:
        show(result, True)
        return
    table = Table(title=f"timpy bench pages: {result['scenario']}")
    table.add_column("table or index")
    table.add_column("pages the batch dirtied", justify="right")
    table.add_column("pages its search indexing dirtied", justify="right")
    trees = list(dict.fromkeys([*result["write_batch_by_tree"], *result["search_indexing_by_tree"]]))
    for tree in trees:
        table.add_row(tree, str(result["write_batch_by_tree"].get(tree, "")),
                      str(result["search_indexing_by_tree"].get(tree, "")))
    table.add_row("[bold]per message[/bold]", str(result["write_batch_pages_per_message"]),
                  str(result["search_indexing_pages_per_message"]))
    table.add_row("[bold]time (ms)[/bold]", str(result["write_batch_ms"]), str(result["search_indexing_ms"]))
    Console().print(table)
