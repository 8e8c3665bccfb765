"""``timpy bench search``: the blind search index, measured on one backend.

Fills a database with messages of ``--words`` words each, drawn from a
Zipf-like vocabulary (a few common words, many rare ones), across
``--conversations`` conversations; indexes them as a conversation's owner
does (``Search.bring_up_to_date``'s transactions); then runs queries of one
and two words (prefixes too) against random conversations, and 3-letter
prefix queries over every conversation at once (a user's search box). Reports messages
indexed per second, index rows and bytes per 100,000 messages (SQLite: pages
used by the index's tables and indexes, from ``dbstat``), and queries per
second with their latency.
"""

from __future__ import annotations

import os
import random
import string
import tempfile
import time
from pathlib import Path

import click
from sqlalchemy import text

from timpy.cli.bench.common import percentile, show
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys
from timpy.crypto.seal import Sealer
from timpy.im import kinds
from timpy.im import search_rules as rules
from timpy.im.search import INDEX_BATCH, plan_for
from timpy.store import schema
from timpy.store.engine import sqlite_engine, url_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.wire.messages import KIND_NORMAL, pack_content


def _vocabulary(rng: random.Random, size: int) -> tuple[list[str], list[float]]:
    words = sorted({"".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10))) for _ in range(size)})
    rng.shuffle(words)
    return words, [1.0 / (rank + 1) for rank in range(len(words))]


def _index_bytes(repo: Repository) -> int | None:
    """Bytes of the index's tables and indexes (SQLite with dbstat), else None."""
    if repo.engine.dialect.name != "sqlite":
        return None
    with repo.engine.connect() as conn:
        try:
            return int(conn.execute(text(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                "('search_postings', 'search_docs', 'sqlite_autoindex_search_docs_1', 'search_heads', "
                "'sqlite_autoindex_search_heads_1')"
            )).scalar() or 0)
        except Exception:  # a SQLite built without dbstat
            return None


def run(url: str | None, messages: int, conversations: int, words: int, queries: int, seed: int) -> dict:
    rng = random.Random(seed)
    vocab, weights = _vocabulary(rng, 5000)
    keys = ClusterKeys.generate()
    indexer = BlindIndexer(keys.index)
    with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
        engine = url_engine(url) if url else sqlite_engine(Path(tmp) / "search.sqlite3")
        schema.metadata.drop_all(engine)
        repo = Repository(engine, Sealer(keys.storage), kinds.effect_of)
        try:
            repo.create_schema()
            a, b = os.urandom(16), os.urandom(16)
            for u in (a, b):
                repo.create_account(u, b"hash", b"profile")
            convs = [os.urandom(16) for _ in range(conversations)]
            batch: list[NewMessage] = []
            for n in range(messages):
                body = " ".join(rng.choices(vocab, weights, k=words))
                content = pack_content(f"c{n}", "alice", "bob", KIND_NORMAL, body.encode(), {})
                batch.append(NewMessage(convs[n % conversations], (a, b), a, os.urandom(16), n, content))
                if len(batch) == 1000 or n == messages - 1:
                    repo.write_batch(batch)
                    batch = []
            t0 = time.perf_counter()
            for conv in convs:
                plan = plan_for(indexer.index("search-conversation", conv))
                more = True
                while more:
                    _, more = repo.search_index(conv, plan, INDEX_BATCH)
            index_s = time.perf_counter() - t0
            postings, _ = repo.search_size()
            size = _index_bytes(repo)
            latencies: list[float] = []
            hits = 0
            t0 = time.perf_counter()
            for _ in range(queries):
                conv = rng.choice(convs)
                picked = rng.choices(vocab, weights, k=rng.choice((1, 2)))
                query = " ".join(w[: rng.randint(2, len(w))] for w in picked)
                q0 = time.perf_counter()
                key = indexer.index("search-conversation", conv)
                hits += len(repo.search_conversation(conv, rules.tokens(key, rules.query_terms(query)), 1000))
                latencies.append(time.perf_counter() - q0)
            query_s = time.perf_counter() - t0
            # A user's search box: every conversation at once (one owner holds them all here).
            wide: list[float] = []
            conv_keys = {c: indexer.index("search-conversation", c) for c in convs}
            for _ in range(max(1, queries // 20)):
                query = rng.choices(vocab, weights)[0][:3]
                q0 = time.perf_counter()
                terms = rules.query_terms(query)
                repo.search_conversations([(c, rules.tokens(k, terms)) for c, k in conv_keys.items()], 10_000)
                wide.append(time.perf_counter() - q0)
        finally:
            kind = engine.dialect.name
            schema.metadata.drop_all(engine)
            repo.close()
    per_100k = 100_000 / messages
    result = {
        "scenario": f"search index on {kind}: {messages} messages of {words} words in {conversations} conversations",
        "messages_indexed_per_s": round(messages / index_s, 1),
        "index_rows_per_100k_messages": round(postings * per_100k),
        "queries": queries,
        "queries_per_s": round(queries / query_s, 1),
        "query_p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "query_p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "mean_hits_per_query": round(hits / queries, 1),
        f"all_{conversations}_conversations_queries_per_s": round(len(wide) / sum(wide), 1),
        "all_conversations_query_p50_ms": round(percentile(wide, 50) * 1000, 2),
        "machine": f"{os.cpu_count()} cores",
    }
    if size is not None:
        result["index_mib_per_100k_messages"] = round(size * per_100k / 2**20, 1)
    return result


@click.command("search")
@click.option("--url", help="SQLAlchemy URL of a database to use (its timpy tables are dropped); default a SQLite file.")
@click.option("--messages", default=100_000, show_default=True)
@click.option("--conversations", default=100, show_default=True)
@click.option("--words", default=10, show_default=True, help="Words per message.")
@click.option("--queries", default=5000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def search_cmd(url: str | None, messages: int, conversations: int, words: int, queries: int, seed: int,
               as_json: bool) -> None:
    """The search index: messages indexed per second, its size per 100,000 messages, queries per second."""
    show(run(url, messages, conversations, words, queries, seed), as_json)
