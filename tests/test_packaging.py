"""Files and packaging: private modes, .gitignore, missing drivers, the Dockerfile and the systemd unit."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import timpy
from tests.conftest import FAST_SECURITY
from tests.support.default_ports import default_ports_lock
from timpy.config import AdminConfig, NodeConfig, load_config
from timpy.errors import ConfigError
from timpy.store.engine import url_engine

ROOT = Path(__file__).parent.parent
NODES = ROOT / "nodes"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def disk_config(data: Path) -> NodeConfig:
    return NodeConfig(data_dir=data, listen="127.0.0.1:0", security=FAST_SECURITY, admin=AdminConfig(listen="127.0.0.1:0"))


async def test_the_data_directory_is_0700_and_its_files_0600(tmp_path):
    data = tmp_path / "data"
    async with timpy.open_node(disk_config(data)) as node:
        await timpy.register(node.tcp_url, "alice", "correct-horse")
        files = ["timpy.sqlite3", "timpy.sqlite3-wal", "timpy.sqlite3-shm", "cluster.key", "node.key", "admin.token"]
        assert mode(data) == 0o700
        assert {name: mode(data / name) for name in files} == dict.fromkeys(files, 0o600)


async def test_loose_files_found_are_tightened_with_a_warning(tmp_path, caplog):
    data = tmp_path / "data"
    async with timpy.open_node(disk_config(data)):
        pass
    loose = ["timpy.sqlite3", "node.key", "admin.token"]
    for name in loose:
        os.chmod(data / name, 0o644)
    os.chmod(data, 0o755)
    with caplog.at_level(logging.WARNING):
        async with timpy.open_node(disk_config(data)):
            assert {name: mode(data / name) for name in loose} == dict.fromkeys(loose, 0o600)
    text = caplog.text
    assert all(f"{data / name} was readable by other users (mode 644); now 0600" in text for name in loose), text
    assert f"data directory {data} is open to other users (mode 755); run: chmod 700 {data}" in text
    os.chmod(data / "cluster.key", 0o644)  # the cluster key is not silently fixed: the node refuses
    with pytest.raises(ConfigError, match="readable by others"):
        async with timpy.open_node(disk_config(data)):
            pass


def test_gitignore_covers_what_the_quickstart_and_the_node_files_create():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    created = [Path("timpy-data") / name for name in ("cluster.key", "node.key", "admin.token", "timpy.sqlite3",
                                                       "timpy.sqlite3-wal", "timpy.sqlite3-shm")]
    for path in sorted(NODES.rglob("*.toml")):
        config = load_config(path)
        data = config.data_dir.relative_to(ROOT)
        created += [config.key_file.relative_to(ROOT), data / "node.key", data / "admin.token",
                    data / "timpy.sqlite3", data / "timpy.sqlite3-wal", data / "timpy.sqlite3-journal"]
        if config.ready_file is not None:
            created.append(config.ready_file.relative_to(ROOT))
    created += [Path("nodes/three/cluster.key"), Path("ready.json"), Path("node1.ready.json")]
    r = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *map(str, created)],
                       cwd=ROOT, capture_output=True, text=True)
    not_ignored = [line.split("\t")[-1] for line in r.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f".gitignore misses {not_ignored}"


@pytest.mark.parametrize(("url", "extra", "module"), [
    ("postgresql+psycopg://timpy@127.0.0.1/test", "postgres", "psycopg"),
    ("mysql+pymysql://root@127.0.0.1/test", "mysql", "pymysql"),
])
def test_a_missing_driver_names_the_extra_to_install(monkeypatch, url, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=rf"\({module}\) is not installed: .*pip install 'timpy\[{extra}\]'"):
        url_engine(url)


def test_the_node_command_says_which_extra_a_url_needs(tmp_path):
    program = "import sys; sys.modules['psycopg'] = None; from timpy.cli.main import main; main()"
    r = subprocess.run(
        [sys.executable, "-c", program, "node", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
         "--ws", "off", "--peer", "off", "--admin", "off", "--database-url", "postgresql+psycopg://timpy@127.0.0.1/test"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")},
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "the PostgreSQL driver (psycopg) is not installed" in r.stderr and "pip install 'timpy[postgres]'" in r.stderr


# --- the Dockerfile and the systemd unit ---------------------------------------------


def dockerfile() -> dict[str, list[str]]:
    """Instructions of the final stage: name -> arguments (continuation lines joined)."""
    lines = (NODES / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    final: dict[str, list[str]] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.strip().partition(" ")
        if name.upper() == "FROM":
            final = {}
        final.setdefault(name.upper(), []).append(rest.strip())
    return final


def test_the_docker_image_builds():
    if shutil.which("docker") is None:
        pytest.skip("no docker command on this machine")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"docker has no engine here (docker info: {(info.stderr or info.stdout).strip()[:200]})")
    r = subprocess.run(["docker", "build", "-f", "nodes/Dockerfile", "-t", "timpy-test", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_docker_image_runs_as_a_node_whose_healthcheck_passes(tmp_path):
    """Without a container engine: the final stage's user, volume, environment, entrypoint
    and healthcheck, run here as they would run in the container."""
    d = dockerfile()
    assert d["USER"] == ["timpy"] and d["VOLUME"] == ["/data"] and d["ENV"][0].startswith("TIMPY_DATA_DIR=/data")
    env = dict(item.split("=", 1) for item in shlex.split(" ".join(d["ENV"])))
    env["TIMPY_DATA_DIR"] = str(tmp_path / "data")  # the volume
    for name in ("TIMPY_LISTEN", "TIMPY_WS", "TIMPY_CLUSTER_LISTEN"):
        assert env[name].startswith("0.0.0.0:")
        env[name] = "127.0.0.1:0"  # tests stay on loopback
    health = json.loads(d["HEALTHCHECK"][0].split("CMD", 1)[1])
    assert "/health" in health[-1]
    entry = json.loads(d["ENTRYPOINT"][0])
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")}, **env}
    bin_dir = str(Path(sys.executable).parent)
    run_env["PATH"] = bin_dir + os.pathsep + run_env.get("PATH", "")
    with default_ports_lock():  # the image's admin port is the default 7073
        node = subprocess.Popen([shutil.which(entry[0], path=run_env["PATH"]), *entry[1:]], env=run_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert _wait_healthy(health, run_env, node), node.stderr.read().decode() if node.stderr else ""
            assert mode(tmp_path / "data") == 0o700
        finally:
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=float(env["TIMPY_SHUTDOWN_TIMEOUT"]) + 10) == 0


def _wait_healthy(command: list[str], env: dict[str, str], node: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and node.poll() is None:
        exe = sys.executable if command[0] == "python" else command[0]
        if subprocess.run([exe, *command[1:]], env=env, capture_output=True, timeout=30).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (NODES / "timpy.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def installed_unit(tmp_path: Path) -> Path:
    """The unit with /opt/timpy/bin/timpy pointing at this checkout's timpy command."""
    text = (NODES / "timpy.service").read_text().replace("/opt/timpy/bin/timpy", str(Path(sys.executable).parent / "timpy"))
    path = tmp_path / "timpy.service"
    path.write_text(text)
    return path


def test_the_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here (the next test runs the unit's command line)")
    r = subprocess.run(["systemd-analyze", "verify", str(installed_unit(tmp_path))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "timpy.service" not in r.stderr, r.stderr


def test_the_systemd_units_command_runs_and_stops_on_its_kill_signal(tmp_path):
    u = unit()
    assert u["ExecStart"][0].startswith("/opt/timpy/bin/timpy node") and u["StateDirectoryMode"] == ["0700"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")}
    env.update(item.split("=", 1) for item in u["Environment"])
    env["TIMPY_DATA_DIR"] = str(tmp_path / "state")  # systemd's StateDirectory
    argv = shlex.split(u["ExecStart"][0])
    argv[0] = str(Path(sys.executable).parent / "timpy")
    kill = getattr(signal, u["KillSignal"][0])
    with default_ports_lock():  # the unit runs with the CLI's default ports
        node = subprocess.Popen([*argv, "--ready-file", str(tmp_path / "ready.json")], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "ready.json").exists():
                assert node.poll() is None and time.monotonic() < deadline, node.stderr.read().decode()
                time.sleep(0.05)
            info = json.loads((tmp_path / "ready.json").read_text())
            with urllib.request.urlopen(f"http://{info['admin']}/health", timeout=10) as r:
                assert r.status == 200
        finally:
            node.send_signal(kill)
            code = node.wait(timeout=float(u["TimeoutStopSec"][0]))
        assert code == 0
        lines = node.stderr.read().decode().splitlines() if node.stderr else []
        assert lines and all(isinstance(json.loads(line), dict) for line in lines)  # --log-json, for the journal
