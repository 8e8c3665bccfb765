"""Creating engines: embedded SQLite (file or memory) or any SQLAlchemy URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import StaticPool

from timpy.errors import ConfigError
from timpy.files import private_database

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


def sqlite_engine(path: Path | None, synchronous: str = "FULL") -> Engine:
    """An engine on a SQLite file in WAL mode, or on memory when ``path`` is None."""
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
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


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
