"""Creating engines: embedded SQLite (file or memory) or any SQLAlchemy URL."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import trio
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import StaticPool

from timpy.concurrency import to_worker
from timpy.errors import ConfigError
from timpy.files import private_database

log = logging.getLogger("timpy.store")

_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}
CONNECT_TIMEOUT = 3  # seconds


SQLITE_CACHE_KIB = 32 * 1024  # page cache per connection to a SQLite file (SQLite's default: 2 MiB)
# A long history spreads a batch's rows over many pages (each conversation's
# messages, its search postings and each member's inbox index sit in their
# own parts of the trees): with a million messages stored a 1:1 flood read
# and wrote about 40 pages per message. Reading them through a memory map
# instead of a read call each, and checkpointing the WAL every 64 MiB rather
# than every 4 MiB (a page written in several commits goes to the database
# file once), took about a sixth off that (docs/performance.md).
SQLITE_MMAP_BYTES = 2 << 30  # address space only (SQLite caps it just below 2 GiB); pages are the OS cache's
SQLITE_CHECKPOINT_PAGES = 16_384  # WAL pages between automatic checkpoints (SQLite's default: 1,000)
# A node checkpoints in the background (``WalCheckpointer``): the writer's
# own automatic checkpoint is then a backstop, for a WAL the background one
# could not keep up with.
SQLITE_BACKSTOP_PAGES = 4 * SQLITE_CHECKPOINT_PAGES
CHECKPOINT_INTERVAL = 0.25  # seconds between two background checkpoints
# The WAL file keeps its largest size once written; when it starts again from
# its beginning SQLite cuts it back to this: the backstop's size (a frame is a
# page and a 24-byte header), so a WAL that stays below the backstop is never
# cut. Frames are 4,120 bytes, not a multiple of the OS page: written past
# the file's end, each makes the kernel allocate blocks and zero the rest of
# the pages it touches, which under a flood at a million stored messages was
# 9% of the node's CPU (a kernel memset under pwrite) when the WAL was cut
# back to 64 MiB at every restart; rewritten in place it is a copy
# (docs/performance.md). The price is disk: a node that was busy keeps a WAL
# of up to this size (about 270 MB) until it stops.
SQLITE_WAL_KEPT_BYTES = SQLITE_BACKSTOP_PAGES * (4096 + 24) + 32


def sqlite_engine(path: Path | None, synchronous: str = "FULL", background_checkpoints: bool = False) -> Engine:
    """An engine on a SQLite file in WAL mode, or on memory when ``path`` is None.

    ``background_checkpoints``: a ``WalCheckpointer`` copies the WAL back
    into the file, so the engine's connections checkpoint only as a backstop."""
    if synchronous.upper() not in _SYNC_MODES:
        raise ValueError(f"sqlite_synchronous must be one of {sorted(_SYNC_MODES)}")
    if path is None:
        # One shared connection: an in-memory database lives and dies with it.
        engine = create_engine(
            "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
        )
    else:
        private_database(path)
        engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"check_same_thread": False, "timeout": 30},
        )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        if path is not None:
            cur.execute("PRAGMA journal_mode=WAL")
            # A group message adds one row per member to the inbox and its two
            # indexes, each in the member's own part of them: with SQLite's
            # 2 MiB default a 10,000-member message read most of those pages
            # back from the file cache. Taken as used, per connection.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            pages = SQLITE_BACKSTOP_PAGES if background_checkpoints else SQLITE_CHECKPOINT_PAGES
            cur.execute(f"PRAGMA wal_autocheckpoint={pages}")
            cur.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_KEPT_BYTES}")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class WalCheckpointer:
    """Copies a SQLite file's WAL back into the file from a connection and a
    thread of its own, beside the writer.

    Left to the writer's connection, a checkpoint runs inside the commit that
    crosses the threshold: with a long history each message dirties pages of
    its own (its conversation's part of each index), so a quarter of a second
    of writes is tens of megabytes to copy and sync while no batch commits.
    Here it is a passive checkpoint (it never waits for the writer and never
    holds it up) every ``CHECKPOINT_INTERVAL`` seconds, on the other core: the
    sqlite3 module lets go of the interpreter lock while SQLite works."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"sqlite_synchronous must be one of {sorted(_SYNC_MODES)}")
        self.path = path
        self.synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        self._done = 0
        self.runs = 0  # checkpoints that copied pages
        self.pages = 0  # WAL frames copied, in all

    def checkpoint(self) -> int:
        """One passive checkpoint (blocking): the WAL frames it copied."""
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=CONNECT_TIMEOUT, check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._conn = conn
        row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        _busy, _frames, done = (int(x) for x in row) if row is not None else (0, 0, 0)
        # ``done``: frames of the WAL copied so far; it starts again at 0 when the WAL does.
        copied = done - self._done if done >= self._done else done
        self._done = done
        if copied > 0:
            self.runs += 1
            self.pages += copied
        return max(0, copied)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Checkpoint every ``interval`` seconds until cancelled."""
        limiter = trio.CapacityLimiter(1)  # its own thread: never behind the store's calls
        try:
            for _ in range(1 << 62):  # bounded by the node's life: cancelled when it stops
                await trio.sleep(interval)
                try:
                    await to_worker(self.checkpoint, limiter=limiter)
                except sqlite3.Error as exc:  # busy or locked: the writer's backstop keeps the WAL bounded
                    log.debug("background checkpoint skipped: %s", exc)
        finally:
            self.close()


def url_engine(url: str, synchronous: str = "FULL") -> Engine:
    """An engine for any SQLAlchemy URL: PostgreSQL via psycopg, MySQL/MariaDB
    via PyMySQL, or a SQLite file (``sqlite:///path``) set up as the embedded one.

    Connecting gives up after a few seconds, so a backend that is down fails
    its requests quickly instead of holding a worker thread.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        return sqlite_engine(None if database in (None, "", ":memory:") else Path(database), synchronous)
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT}
    elif parsed.get_backend_name() in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": 60, "write_timeout": 60}
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=4, connect_args=connect_args)
    except ImportError as exc:  # the dialect's driver is not installed
        raise ConfigError(_missing_driver(parsed.get_backend_name(), parsed.get_driver_name(), exc)) from None


# backend name -> (what it is, the pip extra that installs its driver)
_EXTRAS = {"postgresql": ("PostgreSQL", "postgres"), "mysql": ("MySQL/MariaDB", "mysql"), "mariadb": ("MySQL/MariaDB", "mysql")}


def _missing_driver(backend: str, driver: str, exc: ImportError) -> str:
    module = getattr(exc, "name", None) or driver
    if backend in _EXTRAS:
        what, extra = _EXTRAS[backend]
        return (f"the {what} driver ({module}) is not installed: install timpy with its extra, "
                f"pip install 'timpy[{extra}]' (or '.[{extra}]' in a checkout), or pip install 'timpy[all]'")
    return f"the database driver {module} for {backend}+{driver} URLs is not installed: pip install it"
