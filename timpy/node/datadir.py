"""The data directory lock: one running node per data directory.

Two nodes on one directory would share one node id and one SQLite file and
number the same conversations twice. The running node holds an exclusive
``flock`` on ``node.lock`` in its data directory for its whole life, with its
pid written inside, so a second node (another process, or another node in the
same process) refuses to start and says which process holds the directory.
The operating system drops the lock when the process ends, however it ends:
a lock file left behind by a killed node does not block the next start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from timpy.errors import ConfigError

LOCK_NAME = "node.lock"


class DataDirLock:
    """An exclusive lock on a data directory, held from ``acquire`` to ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's pid in it; raises
        ``ConfigError`` naming the holder's pid when another node has it."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another timpy node (pid {holder})" if holder else "another timpy node"
            raise ConfigError(
                f"{who} is running on the data directory {self.data_dir}: stop that node first, "
                "or start this one with its own directory (--data DIR)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let another node start on the directory (the pid is cleared first)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
