"""Files a node keeps private: its data directory (0700) and what holds secrets or
data in it (0600): the database and its -wal/-shm/-journal files, keys, the admin token.

A file found readable by others is tightened, with a warning; a directory found
open to others is reported (it may be one the operator shares on purpose).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("timpy.files")

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: Path) -> None:
    """Create ``path`` (and parents) 0700; warn if it exists open to others."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("data directory %s is open to other users (mode %o); run: chmod 700 %s", path, mode, path)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600, or tighten it to 0600 (with a warning) if it is looser."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten(path)
    else:
        os.close(fd)


def tighten(path: Path) -> None:
    """Make an existing file 0600 if others could read or write it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700 | 0o600)
        log.warning("%s was readable by other users (mode %o); now 0600", path, mode)


def private_database(path: Path) -> None:
    """A SQLite file and its companions 0600 (SQLite gives new companions the main file's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            tighten(companion)
