"""One lock, across processes, for tests that use the CLI node's default ports.

``timpy node`` with no flags listens on 7070 (TCP), 7071 (WebSocket), 7072 (peer) and
7073 (admin). Several worktrees and test runs share one machine, so a test that needs
those ports (a README command run as written, an example run beside a default node)
holds this lock while it does:

    with default_ports_lock():
        ...  # start a default node, run commands against it, stop it

The lock is an ``fcntl.flock`` on one file in /tmp; the kernel drops it when the holder
exits, even by SIGKILL, so a crashed test run never leaves it held.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_PATH = "/tmp/timpy-default-ports.lock"
DEFAULT_WAIT = 600.0


class DefaultPortsBusy(RuntimeError):
    """Another test held the default-ports lock for longer than we may wait."""


@contextmanager
def default_ports_lock(timeout: float = DEFAULT_WAIT, path: str = LOCK_PATH) -> Iterator[None]:
    """Hold the default-ports lock for the ``with`` block, waiting up to ``timeout`` s for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DefaultPortsBusy(
                        f"waited {timeout:g} s for {path}: another test run is using the default "
                        "ports 7070-7073 (see `fuser -v " + path + "`); let it finish or stop it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
