"""Five real ``timpy node`` processes in network namespaces on one bridge,
the load of 1:1 senders that retry with their client id, and the checker over
every acknowledgement and every replica: what the end-to-end split test
(tests/e2e/test_partition_processes.py) and the chaos soak (tests/e2e/soak.py)
share. Needs root and ``ip``/``iptables``; uses 198.18.0.0/15 only."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import trio

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD
from tests.e2e.netns import IP, IPTABLES
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.seal import Sealer, row_ad
from timpy.im import ids

NODES = 5
MAJORITY, MINORITY = (0, 1, 2), (3, 4)
LONE = 3  # cold-started alone: a node of the former minority
PEER_PORT, CLIENT_PORT = 7000, 7100  # inside each node's own namespace
USERS = [f"u{i}" for i in range(10)]  # u{i} is connected to node i % 5 and sends to u{i+1}
BASELINE_S, SPLIT_S, AFTER_HEAL_S = 4.0, 30.0, 6.0
LIVE_BEFORE, LIVE_AFTER = 5, 10
SEND_PAUSE = 0.05  # between one client's sends: ten clients, not a flood, on a shared machine
ATTEMPT_S = 4.0  # one send attempt; then the same client id again
FAST = (
    "probe_interval = 0.5\nprobe_timeout = 0.4\npush_pull_interval = 2.0\nanti_entropy_interval = 4.0\n"
    "nat = false\nice = false\nreplicas = 3\nwrite_quorum = 2\n"
)



# --- namespaces -----------------------------------------------------------


@dataclass
class Lan:
    """One bridge (in its own namespace) and a namespace per node on it."""

    prefix: str = field(default_factory=lambda: f"tq{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    @staticmethod
    def ip(i: int) -> str:
        return f"198.18.2.{10 + i}"

    def _add(self, ns: str) -> None:
        _run(IP, "netns", "add", ns)
        self.made.append(ns)
        _run(IP, "-n", ns, "link", "set", "lo", "up")

    def build(self) -> Lan:
        lan = f"{self.prefix}lan"
        self._add(lan)
        _run(IP, "-n", lan, "link", "add", "br0", "type", "bridge")
        _run(IP, "-n", lan, "link", "set", "br0", "up")
        for i in range(NODES):
            ns, outer = self.ns(i), f"{self.prefix}v{i}"[-15:]
            self._add(ns)
            _run(IP, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run(IP, "link", "set", outer, "netns", lan)
            _run(IP, "-n", lan, "link", "set", outer, "master", "br0", "up")
            _run(IP, "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _run(IP, "-n", ns, "link", "set", "eth0", "up")
        return self

    def split(self, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        """Drop every packet between side ``a`` and side ``b``, both ways."""
        for side, other in ((a, b), (b, a)):
            for i in side:
                self.cut.append(self.ns(i))
                for j in other:
                    _run(IP, "netns", "exec", self.ns(i), IPTABLES, "-A", "INPUT", "-s", self.ip(j), "-j", "DROP")
                    _run(IP, "netns", "exec", self.ns(i), IPTABLES, "-A", "OUTPUT", "-d", self.ip(j), "-j", "DROP")

    def heal(self) -> None:
        for ns in self.cut:
            _run(IP, "netns", "exec", ns, IPTABLES, "-F")
        self.cut.clear()

    def teardown(self) -> None:
        for ns in self.cut:
            subprocess.run([IP, "netns", "exec", ns, IPTABLES, "-F"], capture_output=True, timeout=30)
        self.cut.clear()
        for ns in reversed(self.made):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()


def _run(*cmd: str) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _dial_in(ns: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:port inside namespace ``ns``: opened by
    a fresh thread that entered it (a socket keeps its namespace)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter network namespace {ns}")
            finally:
                os.close(fd)
            box["sock"] = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if "sock" not in box:
        raise OSError(f"connecting inside {ns} took more than 10 s")
    return box["sock"]  # type: ignore[return-value]


def connector(ns: str):  # noqa: ANN201 - a timpy Connector
    async def dial() -> trio.abc.Stream:
        sock = await trio.to_thread.run_sync(_dial_in, ns, CLIENT_PORT)
        sock.settimeout(None)
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    return dial


# --- node processes ---------------------------------------------------------


class Node:
    def __init__(self, lan: Lan, i: int, work: Path, key: Path) -> None:
        self.lan, self.i, self.work, self.key = lan, i, work, key
        self.ns, self.ip = lan.ns(i), lan.ip(i)
        self.peer = f"{self.ip}:{PEER_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict = {}
        work.mkdir()

    def start(self, join: str | None = None) -> None:
        """Start and wait for its ready file (blocking: call it in a thread)."""
        (self.work / "node.toml").write_text(
            f'data_dir = "data"\nlisten = "127.0.0.1:{CLIENT_PORT}"\nws = "off"\nready_file = "ready.json"\n'
            f'cluster_key_file = "{self.key}"\n'
            f"[security]\npassword_opslimit = {FAST_SECURITY.password_opslimit}\n"
            f"password_memlimit = {FAST_SECURITY.password_memlimit}\n"
            '[admin]\nlisten = "off"\n'
            f'[cluster]\nlisten = "{self.peer}"\n' + (f'join = ["{join}"]\n' if join else "") + FAST
        )
        ready = self.work / "ready.json"
        ready.unlink(missing_ok=True)
        with open(self.work / "node.log", "ab") as log:
            log.write(f"\n===== start at {time.time():.3f} =====\n".encode())
            self.proc = subprocess.Popen(
                [IP, "netns", "exec", self.ns, sys.executable, "-m", "timpy", "node", "--config",
                 str(self.work / "node.toml"), "-v"],
                stdout=log, stderr=log,
            )
        deadline = time.monotonic() + 45
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.i} did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join((self.work / "node.log").read_text(errors="replace").splitlines()[-lines:])

    async def status(self) -> dict | None:
        done = await trio.run_process(
            [IP, "netns", "exec", self.ns, sys.executable, "-m", "timpy", "cluster", "status", "--peer", self.peer,
             "--cluster-key", str(self.key), "--json"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        return json.loads(done.stdout) if done.returncode == 0 else None


async def statuses(nodes: list[Node]) -> dict[int, dict | None]:
    """Every node's ``timpy cluster status``, asked at once."""
    out: dict[int, dict | None] = {}

    async def one(n: Node) -> None:
        out[n.i] = await n.status()

    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n)
    return out


async def start_all(nodes: list[Node], join: str | None = None) -> None:
    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(trio.to_thread.run_sync, n.start, join)


async def wait_whole(nodes: list[Node], count: int, limit: float = 180.0) -> float:
    """Until every node sees ``count`` voters and ring members and holds its
    lease; returns the seconds it took."""
    started = time.monotonic()
    with trio.fail_after(limit):
        while True:
            infos = list((await statuses(nodes)).values())
            if all(
                info is not None
                and len(info["ownership"].get("voters", ())) == count
                and len(info["ownership"].get("ring_members", ())) == count
                and info["ownership"].get("lease")
                for info in infos
            ):
                return time.monotonic() - started
            await trio.sleep(0.5)


# --- the load ------------------------------------------------------------------


@dataclass
class Record:
    acks: list[dict] = field(default_factory=list)  # user, node, conv, seq, cid, body, t, duplicate
    refusals: list[tuple[str, int, float, str]] = field(default_factory=list)  # user, node, t, text
    timeouts: list[tuple[str, int, float]] = field(default_factory=list)
    errors: list[tuple[str, int, float, str]] = field(default_factory=list)  # codes no retry makes right
    unacked: list[str] = field(default_factory=list)  # client ids given up at the end


class Sender:
    """One user on one node sending 1:1 messages, each retried with its
    client id on UNAVAILABLE, timeouts and lost connections until acked."""

    def __init__(self, lan: Lan, user: str, node: int, to: str, rec: Record) -> None:
        self.lan, self.user, self.node, self.to, self.rec = lan, user, node, to, rec
        self.n = 0
        self.client: timpy.Client | None = None
        self.stopped_at: float | None = None  # once the load stops, a message being retried gets 30 s more

    def _give_up(self, deadline: float) -> bool:
        now = time.monotonic()
        return now >= deadline or (self.stopped_at is not None and now >= self.stopped_at + 30)

    async def send_one(self, nursery: trio.Nursery, cid: str, body: str, give_up_at: float) -> bool:
        while not self._give_up(give_up_at):
            if self.client is None or self.client.closed_reason is not None:
                self.client = None
                try:
                    with trio.fail_after(ATTEMPT_S):
                        self.client = await nursery.start(self._session)
                except (OSError, timpy.RemoteError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    code = getattr(exc, "code", None)
                    if code == timpy.Code.UNAVAILABLE:
                        self.rec.refusals.append((self.user, self.node, time.time(), str(exc)))
                    elif code is not None:
                        self.rec.errors.append((self.user, self.node, time.time(), f"login: {code.name} {exc}"))
                    await trio.sleep(0.3)
                    continue
            assert self.client is not None
            try:
                with trio.move_on_after(ATTEMPT_S) as scope:
                    ack = await self.client.send(self.to, body, client_id=cid)
                if scope.cancelled_caught:
                    self.rec.timeouts.append((self.user, self.node, time.time()))
                    continue
            except timpy.RemoteError as exc:
                if exc.code != timpy.Code.UNAVAILABLE:
                    self.rec.errors.append((self.user, self.node, time.time(), f"send: {exc.code.name} {exc}"))
                elif self.client.closed_reason is None:
                    self.rec.refusals.append((self.user, self.node, time.time(), str(exc)))
                await trio.sleep(0.2)
                continue
            self.rec.acks.append(dict(user=self.user, to=self.to, node=self.node, conv=ack.conversation, seq=ack.seq,
                                      cid=cid, body=body, t=time.time(), duplicate=ack.duplicate))
            return True
        self.rec.unacked.append(cid)
        return False

    async def _session(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        started = False
        try:
            async with timpy.connect(connector(self.lan.ns(self.node)), self.user, PASSWORD, sync=False,
                                     device=f"load-{self.user}") as client:
                task_status.started(client)
                started = True
                await trio.sleep_forever()
        except (OSError, timpy.RemoteError, trio.BrokenResourceError):
            if not started:
                raise  # the login failed: send_one counts it and tries again
            # a killed node after the login: the next send reconnects

    async def run(self, nursery: trio.Nursery, stop: trio.Event, limit: float) -> None:
        end = time.monotonic() + limit

        async def note_stop() -> None:
            await stop.wait()
            self.stopped_at = time.monotonic()

        async with trio.open_nursery() as watch:
            watch.start_soon(note_stop)
            while not stop.is_set() and time.monotonic() < end and self.n < 5000:
                cid, body = f"{self.user}-{self.n}", f"{self.user}:{self.n}:{os.urandom(4).hex()}"
                self.n += 1
                await self.send_one(nursery, cid, body, end)
                await trio.sleep(SEND_PAUSE)
            watch.cancel_scope.cancel()


class Verdict:
    """Each promise checked by step; a failure is kept, and all are reported at the end."""

    def __init__(self) -> None:
        self.broken: dict[str, list[str]] = defaultdict(list)
        self.lines: list[str] = []

    def check(self, step: str, ok: bool, detail: str) -> None:
        if not ok:
            self.broken[step].append(detail)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


async def wait_repair_passes(nodes: list[Node], v: Verdict) -> None:
    """Until every node has finished a repair pass that started after the
    load stopped (so one whole pass saw the final state)."""
    need = {}
    for n in nodes:
        rep = (await n.status() or {}).get("repair", {})
        # a pass running now may have started before the load stopped: wait for the one after it
        need[n.i] = rep.get("passes", 0) + (2 if rep.get("running", True) else 1)
    began = time.monotonic()
    infos: dict[int, dict | None] = {}
    with trio.move_on_after(60):  # each status is a process of its own: slow on a loaded machine
        while True:
            infos = await statuses(nodes)
            if all(info and info["repair"]["passes"] >= need[i] for i, info in infos.items()):
                break
            await trio.sleep(1.0)
    reps = {i: (info or {}).get("repair", {}) for i, info in infos.items()}
    v.say(f"repair: a whole pass on every node in {time.monotonic() - began:.1f} s; since start, rows repaired "
          f"{ {i: r.get('rows_repaired') for i, r in reps.items()} }, conflicting slots "
          f"{ {i: r.get('conflicting_slots') for i, r in reps.items()} }")


def _acks_by_conv(rec: Record) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for a in rec.acks:
        out[a["conv"]].append(a)
    return out


async def check_histories(lan: Lan, rec: Record, v: Verdict) -> None:
    step = "history: every acknowledged message once, at its seq, gap-free"
    by_slot: dict[tuple[str, int], set[str]] = defaultdict(set)
    by_cid: dict[tuple[str, str], set[int]] = defaultdict(set)
    for a in rec.acks:
        by_slot[(a["conv"], a["seq"])].add(a["cid"])
        by_cid[(a["conv"], a["cid"])].add(a["seq"])
    two = {k: c for k, c in by_slot.items() if len(c) > 1}
    v.check("acks: no (conversation, seq) acknowledged for two messages", not two, f"{list(two.items())[:5]}")
    moved = {k: q for k, q in by_cid.items() if len(q) > 1}
    v.check("acks: a retried client id is acknowledged at one seq", not moved, f"{list(moved.items())[:5]}")
    for conv, acks in _acks_by_conv(rec).items():
        sender = acks[0]["user"]
        home = acks[0]["node"]
        seen: list[dict[int, tuple[str, str]]] = []
        for node in (home, (home + 2) % NODES, (home + 4) % NODES):
            page = await read_history(lan, node, sender, conv)
            if page is None:
                v.check(step, False, f"{conv[:12]}: history unreadable through node {node}")
                continue
            seqs = [m.seq for m in page]
            if seqs != list(range(1, len(seqs) + 1)):
                holes = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
                v.check(step, False, f"{conv[:12]} through node {node}: seqs not 1..n (holes {holes[:10]}, "
                                     f"repeated {[q for q, c in Counter(seqs).items() if c > 1][:10]})")
            slots = {m.seq: (m.client_id, m.body.decode(errors="replace")) for m in page}
            cids = Counter(m.client_id for m in page)
            for a in acks:
                got = slots.get(a["seq"])
                if got != (a["cid"], a["body"]):
                    v.check(step, False, f"{conv[:12]} through node {node}: acked seq {a['seq']} ({a['cid']}) "
                                         f"holds {got}")
                elif cids[a["cid"]] != 1:
                    v.check(step, False, f"{conv[:12]} through node {node}: {a['cid']} appears {cids[a['cid']]} times")
            seen.append(slots)
        v.check("history: the same through every node", all(s == seen[0] for s in seen),
                f"{conv[:12]}: histories differ between nodes")


async def read_history(lan: Lan, node: int, user: str, conv: str) -> list | None:
    for _ in range(10):  # an owner may still be catching up after the restarts
        try:
            with trio.fail_after(20):
                async with timpy.connect(connector(lan.ns(node)), user, PASSWORD, sync=False,
                                         device="checker") as c:
                    out: list = []
                    after = 0
                    for _ in range(200):
                        page = await c.history(conversation=conv, after=after, limit=200)
                        out += page.messages
                        if not page.more or not page.messages:
                            return out
                        after = page.messages[-1].seq
                    return out
        except (timpy.RemoteError, trio.TooSlowError, OSError):
            await trio.sleep(1.0)
    return None


def check_replicas(nodes: list[Node], indexer: BlindIndexer, sealer: Sealer, rec: Record, v: Verdict) -> None:
    """Read every node's SQLite file: the R replicas of each conversation and
    of each user hold the same rows, and every acked message is in them.
    Message content is compared opened (the cluster key's storage key): two
    replicas may hold one message sealed with different nonces."""
    ring = HashRing.of([n.info["node_id"] for n in nodes])
    dbs = {n.info["node_id"]: sqlite3.connect(f"file:{n.work / 'data' / 'timpy.sqlite3'}?mode=ro", uri=True,
                                              timeout=30) for n in nodes}
    name_of = {n.info["node_id"]: n.i for n in nodes}
    try:
        convs: dict[bytes, list[dict]] = defaultdict(list)
        users: set[str] = set()
        for a in rec.acks:
            convs[ids.parse_conversation(a["conv"])].append(a)
            users.update((a["user"], a["to"]))
        step = "replicas: equal after one repair pass"
        for conv, acks in convs.items():
            copies = {}
            for node in ring.replicas(conv, 3):
                rows = dbs[node].execute(
                    "SELECT seq, dedup, created_ms, content FROM messages WHERE conv_id = ? ORDER BY seq", (conv,)
                ).fetchall()
                copies[node] = {
                    int(q): (bytes(d), int(t), bytes(c) and sealer.open(bytes(c), row_ad("messages", conv, int(q))))
                    for q, d, t, c in rows
                }
            first = next(iter(copies.values()))
            for node, rows in copies.items():
                if rows != first:
                    diff = sorted(set(rows.items()) ^ set(first.items()))[:5]
                    v.check(step, False, f"conversation {conv.hex()[:12]}: node {name_of[node]} differs "
                                         f"({len(rows)} vs {len(first)} rows; slots {[d[0] for d in diff]})")
            sender_id = ids.user_id(indexer, acks[0]["user"])
            for node_id, db in dbs.items():  # any node, replica or not: never another message at an acked seq
                rows = db.execute("SELECT seq, dedup FROM messages WHERE conv_id = ?", (conv,)).fetchall()
                held = {int(q): bytes(d) for q, d in rows}
                seqs_of: dict[bytes, list[int]] = defaultdict(list)
                for q, d in held.items():
                    seqs_of[d].append(q)
                for a in acks:
                    dedup = ids.dedup_index(indexer, sender_id, a["cid"])
                    if a["seq"] in held and held[a["seq"]] != dedup:
                        v.check("replicas: no node holds another message at an acknowledged position", False,
                                f"conversation {conv.hex()[:12]} seq {a['seq']} ({a['cid']}) on node {name_of[node_id]}")
                    if set(seqs_of.get(dedup, [])) - {a["seq"]}:  # the acked message held at another seq too
                        v.check("replicas: no node holds an acknowledged message at another position", False,
                                f"conversation {conv.hex()[:12]} {a['cid']} acked at seq {a['seq']}, held at "
                                f"{sorted(seqs_of[dedup])} on node {name_of[node_id]}")
            for a in acks:
                dedup = ids.dedup_index(indexer, sender_id, a["cid"])
                for node, rows in copies.items():
                    if rows.get(a["seq"], (None,))[0] != dedup:
                        v.check("replicas: every acked message on all R replicas", False,
                                f"conversation {conv.hex()[:12]} seq {a['seq']} ({a['cid']}) not on node "
                                f"{name_of[node]}")
        acked_in = defaultdict(set)
        for a in rec.acks:
            acked_in[a["to"]].add((ids.parse_conversation(a["conv"]), a["seq"]))
        for name in sorted(users):
            uid = ids.user_id(indexer, name)
            copies = {}
            for node in ring.replicas(uid, 3):
                rows = dbs[node].execute("SELECT pos, conv_id, seq FROM inbox WHERE user_id = ?", (uid,)).fetchall()
                copies[node] = {int(p): (bytes(c), int(q)) for p, c, q in rows}
            first = next(iter(copies.values()))
            for node, rows in copies.items():
                if rows != first:
                    v.check(step, False, f"inbox of {name}: node {name_of[node]} differs ({len(rows)} vs "
                                         f"{len(first)} entries)")
                entries = Counter(rows.values())
                lost = [x for x in acked_in[name] if entries[x] != 1]
                v.check("replicas: every acked message once in its recipient's inbox", not lost,
                        f"inbox of {name} on node {name_of[node]}: {len(lost)} acked messages not there exactly once "
                        f"(e.g. seq {[q for _, q in lost[:5]]}, held {[entries[x] for x in lost[:5]]} times)")
    finally:
        for db in dbs.values():
            db.close()
