"""Real ``timpy node`` processes behind NAT, in network namespaces this test
builds (tests/e2e/netns.py): a public node, one behind a full-cone NAT and
two behind symmetric NATs. They form one cluster; a user on each node talks
to every other user with ``timpy chat``; ``timpy cluster status`` must show
the path each pair took:

- public <-> anyone: direct TCP (the NATed nodes dial out);
- full cone <-> symmetric: ICE (the symmetric side's checks reach the full
  cone's server-reflexive address, learned from the public peer);
- symmetric <-> symmetric: relayed through the public node, until one of
  the two NATs turns full cone, when the pair moves to ICE by itself.

Skips with the reason when namespaces cannot be built; with CI=true that is a
failure instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_SECURITY
from tests.e2e.netns import IP, PUBLIC, Internet, why_not_available

pytestmark = pytest.mark.e2e

PORT = 7000
NODES = {"pub": None, "cone": "fullcone", "sym1": "symmetric", "sym2": "symmetric"}
PASSWORD = "correct-horse"


@pytest.fixture(scope="module")
def internet():
    reason = why_not_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the NAT tests cannot run: {reason}")
        pytest.skip(reason)
    net = Internet()
    try:
        yield net.build({k: v for k, v in NODES.items() if v is not None})
    finally:
        net.teardown()


def _in(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def _start(net: Internet, name: str, work: Path, key: Path) -> tuple[subprocess.Popen[bytes], dict]:
    host = net.hosts[name]
    work.mkdir()
    join = "" if name == "pub" else f'join = ["{PUBLIC}:{PORT}"]\n'
    (work / "node.toml").write_text(
        f'data_dir = "data"\nlisten = "127.0.0.1:0"\nws = "off"\nready_file = "ready.json"\n'
        f'cluster_key_file = "{key}"\n'
        f"[security]\npassword_opslimit = {FAST_SECURITY.password_opslimit}\n"
        f"password_memlimit = {FAST_SECURITY.password_memlimit}\n"
        '[admin]\nlisten = "off"\n'
        f'[cluster]\nlisten = "{host.ip}:{PORT}"\n{join}'
        "probe_interval = 0.5\nprobe_timeout = 0.4\npush_pull_interval = 3.0\n"
        "ice_timeout = 6.0\nupgrade_interval = 4.0\n"
    )
    log = open(work / "node.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [IP, "netns", "exec", host.ns, sys.executable, "-m", "timpy", "node", "--config", str(work / "node.toml"),
         "-v"],
        stdout=log, stderr=log,
    )
    deadline = time.monotonic() + 30
    while not (work / "ready.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{(work / 'node.log').read_text()}")
        time.sleep(0.1)
    return proc, json.loads((work / "ready.json").read_text())


def _status(net: Internet, name: str, key: Path) -> dict:
    done = _in(net.hosts[name].ns, sys.executable, "-m", "timpy", "cluster", "status", "--peer",
               f"{net.hosts[name].ip}:{PORT}", "--cluster-key", str(key), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _paths(info: dict) -> dict[str, dict | None]:
    """member address -> the path as that node sees it."""
    return {m["address"]: m["path"] for m in info["members"] if m["name"] != info["node"] and m["state"] == "alive"}


def _expected(a: str, b: str) -> str:
    if "pub" in (a, b):
        return "tcp"
    if "cone" in (a, b):
        return "ice"
    return "relay"


def test_nodes_behind_full_cone_and_symmetric_nat_form_one_cluster_and_talk(internet: Internet, tmp_path: Path):
    net = internet
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    infos: dict[str, dict] = {}
    try:
        for name in NODES:
            procs[name], infos[name] = _start(net, name, tmp_path / name, key)
        address = {name: f"{net.hosts[name].ip}:{PORT}" for name in NODES}

        deadline = time.monotonic() + 90
        while True:  # every node holds its lease on the ring a majority accepted (docs/consistency.md)
            owns = [_status(net, name, key).get("ownership", {}) for name in NODES]
            if all(o.get("lease") and len(o.get("ring_members", ())) == len(NODES) for o in owns):
                break
            assert time.monotonic() < deadline, f"the ring did not form: {owns}"
            time.sleep(1)
        # users on every node talk to every other user, through whatever paths the nodes found
        for name in NODES:
            done = _in(net.hosts[name].ns, sys.executable, "-m", "timpy", "chat", "--url",
                       f"tcp://{infos[name]['tcp']}", "--user", f"u{name}", "--password", PASSWORD, "--register")
            assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 60
        while True:  # every node knows every other as alive
            views = {name: _status(net, name, key) for name in NODES}
            if all(len(_paths(v)) == len(NODES) - 1 for v in views.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for a in NODES:
            for b in NODES:
                if a == b:
                    continue
                done = _in(net.hosts[a].ns, sys.executable, "-m", "timpy", "chat", "--url",
                           f"tcp://{infos[a]['tcp']}", "--user", f"u{a}", "--password", PASSWORD,
                           "--to", f"u{b}", "--send", f"from {a} to {b}")
                assert done.returncode == 0, f"u{a} -> u{b}: {done.stderr}"
        names = list(NODES)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                done = _in(net.hosts[b].ns, sys.executable, "-m", "timpy", "chat", "--url",
                           f"tcp://{infos[b]['tcp']}", "--user", f"u{b}", "--password", PASSWORD,
                           "--to", f"u{a}", "--history", "10")
                assert done.returncode == 0, done.stderr
                assert f"from {a} to {b}" in done.stdout and f"from {b} to {a}" in done.stdout, done.stdout

        # the paths settle: ICE upgrades the relayed pairs it can
        deadline = time.monotonic() + 90
        while True:
            views = {name: _paths(_status(net, name, key)) for name in NODES}
            seen = {(a, b): (views[a].get(address[b]) or {}).get("kind") for a in NODES for b in NODES if a != b}
            want = {(a, b): _expected(a, b) for a, b in seen}
            if seen == want or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert seen == want, json.dumps(views, indent=1)
        cone_to_sym = views["cone"][address["sym1"]]
        assert {cone_to_sym["local"], cone_to_sym["remote"]} & {"srflx", "prflx"}, cone_to_sym
        assert views["sym1"][address["sym2"]]["via"] == infos["pub"]["node_id"]
        text = _in(net.hosts["sym1"].ns, "env", "COLUMNS=200", sys.executable, "-m", "timpy", "cluster", "status",
                   "--peer", address["sym1"], "--cluster-key", str(key)).stdout
        print(text)
        assert f"relayed via {infos['pub']['node_id']}" in text and "ICE" in text and "direct TCP" in text, text

        # traffic still flows on the settled paths (the relayed pair included)
        done = _in(net.hosts["sym1"].ns, sys.executable, "-m", "timpy", "chat", "--url",
                   f"tcp://{infos['sym1']['tcp']}", "--user", "usym1", "--password", PASSWORD,
                   "--to", "usym2", "--send", "after the paths settled")
        assert done.returncode == 0, done.stderr
        done = _in(net.hosts["sym2"].ns, sys.executable, "-m", "timpy", "chat", "--url",
                   f"tcp://{infos['sym2']['tcp']}", "--user", "usym2", "--password", PASSWORD,
                   "--to", "usym1", "--history", "10")
        assert "after the paths settled" in done.stdout, done.stdout

        # the second symmetric NAT turns full cone: the relayed pair moves to ICE on its next try
        net.set_nat("sym2", "fullcone")
        deadline = time.monotonic() + 60
        while True:
            now = {name: _paths(_status(net, name, key)) for name in ("sym1", "sym2")}
            kinds = {(now["sym1"].get(address["sym2"]) or {}).get("kind"),
                     (now["sym2"].get(address["sym1"]) or {}).get("kind")}
            if kinds == {"ice"} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert kinds == {"ice"}, json.dumps(now, indent=1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for name in procs:
            log = (tmp_path / name / "node.log").read_text(errors="replace")
            print(f"----- {name} -----\n{log[-6000:]}")
