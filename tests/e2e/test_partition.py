"""Five real ``timpy node`` processes in network namespaces this test builds
(198.18.1.0/24 on one bridge, torn down after), under continuous load from
both sides: a 3/2 split for 30 s, then the network heals. A checker reads
every node's database afterwards (issue 15).

What it asserts, and which part of issue 15 makes it true:

- after the heal and one repair pass, every key's R replicas hold equal
  copies (repair by content digests) - always asserted;
- no acknowledged message is lost or renumbered, and the minority side
  answered UNAVAILABLE - needs ownership by quorum (``timpy.cluster.ownership``);
  asserted when that module is present, otherwise the counts are printed.

Skips with the reason when namespaces cannot be built; with CI=true that is
a failure instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_SECURITY
from tests.e2e.netns import IP, IPTABLES, Host, Internet, _run, why_not_available
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, decode_key
from timpy.im import ids

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"n{i}" for i in range(5)]
MAJORITY, MINORITY = NAMES[:3], NAMES[3:]
PEER, CLIENT = 7072, 7070
SPLIT_SECONDS = 30
QUORUM = importlib.util.find_spec("timpy.cluster.ownership") is not None


class Lan(Internet):
    """Hosts on one bridge, each in its own namespace: 198.18.1.10, .11, ..."""

    def build_lan(self, names: list[str]) -> Lan:
        self.inet = self._ns("inet")
        _run(IP, "-n", self.inet, "link", "add", "br0", "type", "bridge")
        _run(IP, "-n", self.inet, "link", "set", "br0", "up")
        for i, name in enumerate(names):
            ns = self._ns(name)
            ip = f"198.18.1.{10 + i}"
            self._wire(ns, "eth0", f"{ip}/24")
            self.hosts[name] = Host(ns, ip)
        return self

    def split(self, *sides: list[str]) -> None:
        """Drop every packet between hosts on different sides."""
        for side in sides:
            others = [n for n in self.hosts if n not in side]
            for name in side:
                for other in others:
                    ip = self.hosts[other].ip
                    _run(IP, "netns", "exec", self.hosts[name].ns, IPTABLES, "-A", "INPUT", "-s", ip, "-j", "DROP")
                    _run(IP, "netns", "exec", self.hosts[name].ns, IPTABLES, "-A", "OUTPUT", "-d", ip, "-j", "DROP")

    def heal(self) -> None:
        for host in self.hosts.values():
            _run(IP, "netns", "exec", host.ns, IPTABLES, "-F")


@pytest.fixture(scope="module")
def lan():
    reason = why_not_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the partition test cannot run: {reason}")
        pytest.skip(reason)
    net = Lan()
    try:
        yield net.build_lan(NAMES)
    finally:
        net.teardown()


def _in(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _start(net: Lan, name: str, work: Path, key: Path) -> subprocess.Popen[bytes]:
    host = net.hosts[name]
    work.mkdir(exist_ok=True)
    join = ", ".join(f'"{h.ip}:{PEER}"' for n, h in net.hosts.items() if n != name)
    (work / "node.toml").write_text(
        f'data_dir = "data"\nlisten = "{host.ip}:{CLIENT}"\nws = "off"\nready_file = "ready.json"\n'
        f'cluster_key_file = "{key}"\n'
        f"[security]\npassword_opslimit = {FAST_SECURITY.password_opslimit}\n"
        f"password_memlimit = {FAST_SECURITY.password_memlimit}\n"
        '[admin]\nlisten = "off"\n'
        f'[cluster]\nlisten = "{host.ip}:{PEER}"\njoin = [{join}]\n'
        "probe_interval = 0.5\nprobe_timeout = 0.4\npush_pull_interval = 3.0\nanti_entropy_interval = 15.0\n"
    )
    (work / "ready.json").unlink(missing_ok=True)
    log = open(work / "node.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [IP, "netns", "exec", host.ns, sys.executable, "-m", "timpy", "node", "--config", str(work / "node.toml")],
        stdout=log, stderr=log,
    )
    deadline = time.monotonic() + 60
    while not (work / "ready.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{(work / 'node.log').read_text()}")
        time.sleep(0.1)
    return proc


def _status(net: Lan, name: str, key: Path) -> dict:
    done = _in(net.hosts[name].ns, sys.executable, "-m", "timpy", "cluster", "status", "--peer",
               f"{net.hosts[name].ip}:{PEER}", "--cluster-key", str(key), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait(what: str, check, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def _loadgen(net: Lan, name: str, out: Path, users: list[str], to: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [IP, "netns", "exec", net.hosts[name].ns, sys.executable, "-m", "tests.e2e.loadgen",
         f"tcp://{net.hosts[name].ip}:{CLIENT}", str(out), "--users", ",".join(users), "--to", ",".join(to),
         "--max-seconds", "240"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "ab"),  # noqa: SIM115
    )


def _whole(info: dict) -> bool:
    """Five members alive and, with ownership by quorum, this node leased on the five-node ring."""
    own = info.get("ownership", {})
    leased = not QUORUM or (own.get("lease") and len(own.get("ring_members", ())) == 5)
    return sum(m["state"] == "alive" for m in info["members"]) == 5 and bool(leased)


def _rows(db: Path) -> tuple[dict[tuple[bytes, int], bytes], dict[tuple[bytes, int], tuple[bytes, int]]]:
    """(conv, seq) -> dedup, and (user, pos) -> (conv, seq), as stored in one node's database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        messages = {(bytes(c), int(q)): bytes(d) for c, q, d in conn.execute("select conv_id, seq, dedup from messages")}
        inbox = {(bytes(u), int(p)): (bytes(c), int(q)) for u, p, c, q in conn.execute(
            "select user_id, pos, conv_id, seq from inbox")}
    finally:
        conn.close()
    return messages, inbox


def test_split_three_two_under_load_then_heal(lan: Lan, tmp_path: Path) -> None:
    net = lan
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    keys = ClusterKeys(decode_key(key.read_text(), str(key)))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    loads: list[subprocess.Popen[bytes]] = []
    majority_users, minority_users = [f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]
    everyone = majority_users + minority_users
    try:
        for name in NAMES:
            procs[name] = _start(net, name, tmp_path / name, key)
        _wait("five members alive everywhere, each leased on the five-node ring",
              lambda: all(_whole(_status(net, n, key)) for n in NAMES), 90)
        reg = _in(net.hosts["n0"].ns, sys.executable, "-m", "tests.e2e.loadgen", f"tcp://{net.hosts['n0'].ip}:{CLIENT}",
                  str(tmp_path / "register.jsonl"), "--register", ",".join(everyone), timeout=120)
        assert reg.returncode == 0, reg.stderr
        loads.append(_loadgen(net, "n0", tmp_path / "majority.jsonl", majority_users, everyone))
        loads.append(_loadgen(net, "n4", tmp_path / "minority.jsonl", minority_users, everyone))
        time.sleep(5)
        net.split(MAJORITY, MINORITY)
        time.sleep(SPLIT_SECONDS)
        net.heal()
        time.sleep(5)
        for out in ("majority", "minority"):
            (tmp_path / f"{out}.stop").touch()
        for p in loads:
            p.wait(timeout=60)
        _wait("five members alive everywhere after the heal, each leased on the five-node ring",
              lambda: all(_whole(_status(net, n, key)) for n in NAMES), 120)
        # A repair pass that starts on every node after the heal (they run every 15 s and
        # after each ring change), then the copies must be equal.
        passes = {n: _status(net, n, key)["repair"]["passes"] for n in NAMES}
        _wait("a repair pass on every node after the heal", lambda: all(
            (r := _status(net, n, key)["repair"])["passes"] > passes[n] + 1 and not r["running"] for n in NAMES), 180)
        time.sleep(2)  # inbox entries put back by repair are replicated with the write quorum; let the rest land
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # --- the checker -----------------------------------------------------------------
    node_ids = {n: json.loads((tmp_path / n / "ready.json").read_text())["node_id"] for n in NAMES}
    ring = HashRing.of(node_ids.values())
    by_id = {node_ids[n]: n for n in NAMES}
    stored = {n: _rows(tmp_path / n / "data" / "timpy.sqlite3") for n in NAMES}
    indexer = BlindIndexer(keys.index)
    acks = [json.loads(line) for out in ("majority", "minority") for line in
            (tmp_path / f"{out}.jsonl").read_text().splitlines() if line.strip()]
    errors = {out: json.loads((tmp_path / f"{out}.errors.json").read_text()) for out in ("majority", "minority")}
    assert len(acks) > 100, (len(acks), errors)

    # 1. Every key's replicas hold equal copies (repair).
    unequal = []
    convs = {c for m, _ in stored.values() for c, _ in m}
    for conv in convs:
        copies = [{q: d for (c, q), d in stored[by_id[r]][0].items() if c == conv} for r in ring.replicas(conv, 3)]
        if any(c != copies[0] for c in copies):
            unequal.append(("conversation", conv.hex()))
    users = {u for _, i in stored.values() for u, _ in i}
    for user in users:
        copies = [{p: v for (u, p), v in stored[by_id[r]][1].items() if u == user} for r in ring.replicas(user, 3)]
        if any(c != copies[0] for c in copies):
            unequal.append(("inbox", user.hex()))
    assert not unequal, unequal

    # 2. No acknowledged message lost or renumbered (ownership by quorum).
    lost = []
    for ack in acks:
        sender = ids.user_id(indexer, ack["sender"])
        conv = ids.parse_conversation(ack["conversation"])
        owner = by_id[ring.owner(conv)]
        if stored[owner][0].get((conv, ack["seq"])) != ids.dedup_index(indexer, sender, ack["client_id"]):
            lost.append(ack)
    print(f"acknowledged {len(acks)}, lost or renumbered {len(lost)}; refusals {errors}")
    if QUORUM:
        assert not lost, lost[:10]
        assert errors["minority"].get("UNAVAILABLE", 0) > 0, errors
