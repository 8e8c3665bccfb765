"""The examples in examples/ and the README's embedding snippet run as they are (CI runs them
through this), also while a default `timpy node` runs beside them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.default_ports import default_ports_lock

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def readme_embedding_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Embedding", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    r = run_python([str(path)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_examples_and_the_readme_snippet_run_beside_a_default_node(tmp_path):
    """An embedded node opens only what its config names: nothing collides with
    `timpy node` on its default ports 7070-7073."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")}
    with default_ports_lock():
        ready = tmp_path / "ready.json"
        log = open(tmp_path / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen([sys.executable, "-m", "timpy", "node", "--ready-file", str(ready)],
                                cwd=tmp_path, stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert node.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            assert (info["tcp"], info["ws"], info["peer"], info["admin"]) == (
                "127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072", "127.0.0.1:7073"
            )
            (tmp_path / "snippet.py").write_text(readme_embedding_snippet())
            for args in [["snippet.py"], *[[str(p)] for p in EXAMPLES]]:
                r = run_python(args, tmp_path)
                assert r.returncode == 0 and "Address already in use" not in r.stderr, (args, r.stderr)
                assert r.stdout.strip(), args
            assert node.poll() is None  # the default node is still serving
        finally:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
            log.close()


def test_a_taken_address_names_itself_and_the_option(tmp_path):
    """Two nodes on one port: the second says which address, which option, and what to do."""
    with default_ports_lock():
        first = subprocess.Popen([sys.executable, "-m", "timpy", "node", "--memory", "--ready-file", "r.json"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "r.json").exists():
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            off = ["--peer", "off", "--listen", "127.0.0.1:0", "--ws", "off"]
            for flags, what, address, option in [
                ([], "peer listener", "7072", "[cluster] listen (flag --peer, $TIMPY_CLUSTER_LISTEN)"),
                (off[:2], "TCP client listener", "7070", "listen (flag --listen, $TIMPY_LISTEN)"),
                (off[:4], "WebSocket listener", "7071", "ws (flag --ws, $TIMPY_WS)"),
                (off, "admin listener", "7073", "[admin] listen (flag --admin, $TIMPY_ADMIN_LISTEN)"),
            ]:
                r = subprocess.run([sys.executable, "-m", "timpy", "node", "--memory", *flags], cwd=tmp_path,
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
                assert f"cannot open the {what} on 127.0.0.1:{address}: the address is already in use" in r.stderr
                assert f"Set {option} to a free HOST:PORT" in r.stderr, r.stderr
        finally:
            first.send_signal(signal.SIGINT)
            first.wait(timeout=30)
