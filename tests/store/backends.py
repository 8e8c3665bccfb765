"""The SQL backends the store tests run against.

PostgreSQL and MariaDB are the servers the CI machine runs (127.0.0.1, database
``test``). On a laptop without them those cases skip, saying why; with CI=true
they must run, so an unreachable server fails the run instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text

from timpy.store import schema
from timpy.store.engine import sqlite_engine, url_engine

SERVERS = {
    "postgresql": os.environ.get("TIMPY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("TIMPY_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ["sqlite-memory", "sqlite-file", *SERVERS]


def _reachable(url: str) -> str | None:
    try:
        probe = create_engine(url)
        with probe.connect() as conn:
            conn.execute(text("select 1"))
        probe.dispose()
        return None
    except Exception as exc:  # any driver error means: not usable here
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def make_engine(backend: str, tmp_path: Path) -> Engine:
    if backend == "sqlite-memory":
        return sqlite_engine(None)
    if backend == "sqlite-file":
        return sqlite_engine(tmp_path / "db.sqlite3")
    engine = url_engine(require_server(backend))
    schema.metadata.drop_all(engine)  # a clean database for every test
    return engine


def dump_tables(engine: Engine) -> bytes:
    """Every value of every timpy table, as bytes (to look for readable data)."""
    dump = b""
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                dump += b"".join(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row)
    return dump


def clear(engine: Engine) -> None:
    """Empty every table (cheaper than dropping them, for hypothesis examples)."""
    with engine.begin() as conn:
        for table in reversed(schema.metadata.sorted_tables):
            conn.execute(table.delete())


def require_server(kind: str) -> str:
    """The server's URL, or skip (fail in CI) when it is not reachable.

    Under pytest-xdist each worker gets a database of its own (``test_gw0``, …,
    made on first use beside the configured one), because the store tests drop
    and recreate every table of the database they use."""
    url = SERVERS[kind]
    problem = _reachable(url)
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{kind} at {url} is required in CI but unreachable: {problem}")
        pytest.skip(f"{kind} is not reachable at {url} ({problem}); set TIMPY_TEST_{kind.upper()} to test it")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    own = f"{url.rsplit('/', 1)[1]}_{worker}"
    if (kind, own) not in _MADE:
        _create_database(kind, url, own, drop=False)
        _MADE.add((kind, own))
    return url.rsplit("/", 1)[0] + "/" + own


_MADE: set[tuple[str, str]] = set()


def _create_database(kind: str, url: str, name: str, drop: bool) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if kind == "postgresql":
                if drop:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                if drop:
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}`"))
    finally:
        admin.dispose()


def fresh_database(kind: str, name: str, tmp_path: Path) -> str:
    """The URL of an empty database called ``name`` (a new file for SQLite;
    under pytest-xdist the worker's name is appended, as for ``require_server``)."""
    if kind.startswith("sqlite"):
        return f"sqlite:///{tmp_path / (name + '.sqlite3')}"
    base = require_server(kind)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        name = f"{name}_{worker}"
    _create_database(kind, base, name, drop=True)
    return base.rsplit("/", 1)[0] + "/" + name
