"""Shared fixtures: fast password hashing, in-process nodes, node processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import timpy
from timpy.client import Connector
from timpy.config import AdminConfig, ClusterConfig, NodeConfig, SecurityConfig

# argon2id at its minimum cost: tests check behaviour, not hash strength.
FAST_SECURITY = SecurityConfig(password_opslimit=1, password_memlimit=8192)
FAST_SECURITY_TOML = (
    "[security]\npassword_opslimit = 1\npassword_memlimit = 8192\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    "[cluster]\nlisten = \"127.0.0.1:0\"\n"
)
PASSWORD = "correct-horse"


def node_config(**changes: object) -> NodeConfig:
    base = NodeConfig(
        memory=True, listen="127.0.0.1:0", ws="127.0.0.1:0", security=FAST_SECURITY,
        cluster=ClusterConfig(listen="127.0.0.1:0"), admin=AdminConfig(listen="127.0.0.1:0"),
    )
    return base.replace(**changes)


@pytest.fixture
async def node() -> AsyncIterator[timpy.Node]:
    async with timpy.open_node(node_config()) as n:
        yield n


async def users(url: str | Connector, *names: str) -> None:
    for name in names:
        await timpy.register(url, name, PASSWORD)


class NodeProcess:
    """A real ``timpy node`` process on loopback, driven as an operator would."""

    def __init__(
        self, workdir: Path, extra_args: tuple[str, ...] = (), top_toml: str = "", cluster_toml: str = ""
    ) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.top_toml = top_toml
        self.cluster_toml = cluster_toml
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, object] = {}

    def start(self) -> NodeProcess:
        config = self.workdir / "node.toml"
        config.write_text(
            'data_dir = "data"\nlisten = "127.0.0.1:0"\nws = "127.0.0.1:0"\nready_file = "ready.json"\n'
            + self.top_toml
            + FAST_SECURITY_TOML
            + self.cluster_toml
        )
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        self.log = open(self.workdir / "node.log", "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "TIMPY_CLUSTER_KEY"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timpy", "node", "--config", str(config), *self.extra_args],
            stdout=self.log,
            stderr=self.log,
            env=env,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start:\n{self.log_text()}")
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())
        return self

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.info['tcp']}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.info['ws']}/"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.log.close()
        return code

    def log_text(self) -> str:
        return (self.workdir / "node.log").read_text(errors="replace")


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeProcess]:
    p = NodeProcess(tmp_path).start()
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.stop()


def run_sync(fn, *args):  # noqa: ANN001, ANN201 - helper for sync tests
    return trio.run(fn, *args)


from hypothesis import settings as _settings  # noqa: E402

# Timing varies on a shared 2-core CI machine; correctness, not speed, is tested.
# Both profiles keep exploring: every run draws a new seed, printed in pytest's
# header (rerun one with --hypothesis-seed=N). Under CI=true hypothesis would load its
# built-in "ci" profile (derandomize=True: the same examples on every run, forever);
# "timpy-ci" randomizes instead, and keeps no example database, so a failure found once
# is reported with its seed and blob rather than replayed on every later run.
_settings.register_profile("timpy", parent=_settings.get_profile("default"), deadline=None, print_blob=True)
_settings.register_profile("timpy-ci", parent=_settings.get_profile("timpy"), derandomize=False, database=None)
_settings.load_profile("timpy-ci" if os.environ.get("CI", "").lower() in ("true", "1", "yes") else "timpy")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # tryfirst: before hypothesis's own pytest_configure, which applies --hypothesis-seed.
    worker = getattr(config, "workerinput", None)  # under pytest-xdist: the seed the controller drew
    if worker is not None and "hypothesis_seed" in worker:
        config.option.hypothesis_seed = worker["hypothesis_seed"]
    elif config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # noqa: ANN001 - xdist's WorkerController
    """Every xdist worker explores with the controller's seed, so the printed one reproduces the run."""
    node.workerinput["hypothesis_seed"] = node.config.getoption("hypothesis_seed")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # noqa: ANN001
    # Printed under -q too (pytest drops the header then), so every CI log names its seed.
    if getattr(config, "workerinput", None) is None:
        seed = config.getoption("hypothesis_seed", None)
        terminalreporter.write_line(f"hypothesis seed {seed} (rerun with --hypothesis-seed={seed})")


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis profile {_settings.get_current_profile_name()!r}, seed {seed} (rerun with --hypothesis-seed={seed})"


# pytest-xdist (the README's test command runs two workers, ``--dist loadgroup``).
# Tests that build network namespaces run one at a time on one worker: they are the
# most timing-sensitive (leases, NAT bindings) and each runs several node processes.
# Shared database servers need no group: each worker has its own databases
# (tests/store/backends.py); the default ports have their own cross-process lock.
SERIAL_GROUPS = {
    "tests/e2e/test_nat.py": "netns",
    "tests/e2e/test_partition_processes.py": "netns",
    "tests/cluster/test_nat.py": "netns",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        group = SERIAL_GROUPS.get(Path(str(item.path)).relative_to(root).as_posix())
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
