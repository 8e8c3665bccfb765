"""Issue 15's end-to-end chaos: five real ``timpy node`` processes, each in
its own network namespace on one bridge (198.18.2.0/24, built and torn down
here), R = 3, W = 2, embedded SQLite, under a load of 1:1 senders that retry
with the same client id. In order:

1. a 3/2 split (iptables DROP between the sides) for 30 s under load, then heal;
2. every node killed, then one started alone (a cold start): it must answer
   UNAVAILABLE, never BAD_CREDENTIALS or NO_SUCH_USER, and register no one;
   then the others started (no ``--join``: they rejoin the members they knew);
3. a user's owner killed and started again 0.2 s later while the user has a
   live terminal on another node, which must keep receiving.

A checker then holds the cluster to its promise: every acknowledged message
is in its conversation's history, read through several nodes, exactly once,
at its acknowledged seq, with no gap; every replica of every key (read from
each node's SQLite file) equal after a repair pass; the minority answered
UNAVAILABLE; the live terminal received everything. A summary is printed.

Clients run in this process (trio, ``timpy.connect``); each connects to the
node in its namespace through a socket opened by a thread that entered that
namespace (setns). Skips with the reason without root or ``ip``; with CI=true
that is a failure instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

import timpy
from tests.conftest import PASSWORD
from tests.e2e.netns import why_not_available
from tests.support.split_cluster import (
    AFTER_HEAL_S,
    ATTEMPT_S,
    BASELINE_S,
    LIVE_AFTER,
    LIVE_BEFORE,
    LONE,
    MAJORITY,
    MINORITY,
    NODES,
    SPLIT_S,
    USERS,
    Lan,
    Node,
    Record,
    Sender,
    Verdict,
    check_histories,
    check_replicas,
    connector,
    start_all,
    wait_repair_passes,
    wait_whole,
)
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, decode_key
from timpy.crypto.seal import Sealer
from timpy.im import ids

pytestmark = pytest.mark.e2e


@pytest.fixture
def lan():
    reason = why_not_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the partition test cannot run: {reason}")
        pytest.skip(reason)
    net = Lan()
    try:
        yield net.build()
    finally:
        net.teardown()


async def test_split_lone_cold_start_and_quick_owner_restart_lose_nothing(lan: Lan, tmp_path: Path):
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    keys = ClusterKeys(decode_key(key.read_text(), str(key)))
    indexer = BlindIndexer(keys.index)
    nodes = [Node(lan, i, tmp_path / f"n{i}", key) for i in range(NODES)]
    rec, v = Record(), Verdict()
    began = time.monotonic()
    try:
        # --- start: node 0 first, the others join it -------------------------
        await trio.to_thread.run_sync(nodes[0].start)
        await start_all(nodes[1:], nodes[0].peer)
        formed = await wait_whole(nodes, NODES)
        v.say(f"cluster of {NODES} formed (voters, ring, leases) in {formed:.1f} s")
        for i, user in enumerate(USERS):
            await timpy.register(connector(lan.ns(i % NODES)), user, PASSWORD)

        # --- 1. a 3/2 split for 30 s under load, then heal --------------------
        senders = [Sender(lan, u, i % NODES, USERS[(i + 1) % len(USERS)], rec) for i, u in enumerate(USERS)]
        stop = trio.Event()
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as load:
                for s in senders:
                    load.start_soon(s.run, sessions, stop, BASELINE_S + SPLIT_S + 90)
                await trio.sleep(BASELINE_S)
                split_t = time.time()
                await trio.to_thread.run_sync(lan.split, MAJORITY, MINORITY)
                await trio.sleep(SPLIT_S)
                heal_t = time.time()
                await trio.to_thread.run_sync(lan.heal)
                healed = await wait_whole(nodes, NODES)
                v.say(f"split at {time.strftime('%H:%M:%S', time.gmtime(split_t))} UTC, healed at "
                      f"{time.strftime('%H:%M:%S', time.gmtime(heal_t))}")
                v.say(f"healed: every node back in one ring with its lease {healed:.1f} s after the heal")
                await trio.sleep(AFTER_HEAL_S)
                stop.set()
            sessions.cancel_scope.cancel()
        phase1_acks = len(rec.acks)

        during = [r for r in rec.refusals if split_t <= r[2] <= heal_t]
        minority_refusals = [r for r in during if r[1] in MINORITY]
        minority_acks = [a for a in rec.acks if a["node"] in MINORITY and split_t <= a["t"] <= heal_t]
        first_refusal = min((r[2] for r in minority_refusals), default=None)
        minority_timeouts = [t for t in rec.timeouts if t[1] in MINORITY and split_t <= t[2] <= heal_t]
        last_minority_ack = max((a["t"] for a in minority_acks), default=None)
        v.say(
            f"split: {len(minority_refusals)} sends refused UNAVAILABLE on the minority side "
            f"(first {_after(first_refusal, split_t)} after the split), {len(minority_acks)} acknowledged there "
            f"(last {_after(last_minority_ack, split_t)} after the split), {len(minority_timeouts)} attempts there "
            f"unanswered for {ATTEMPT_S} s; "
            f"{sum(r[1] in MAJORITY for r in during)} refusals on the majority side"
        )
        for s in senders:
            if s.node in MAJORITY:
                times = [a["t"] for a in rec.acks if a["user"] == s.user]
                v.say(f"  {s.user} on node {s.node} (majority) to {s.to}: "
                      f"served again {_served_again(times, split_t, heal_t)}")
        v.check("1. split: the minority answers UNAVAILABLE", bool(minority_refusals),
                "no send on the minority side was refused UNAVAILABLE during the split")

        # --- 2. every node killed; one cold-started alone ---------------------
        for n in nodes:
            n.kill()
        await trio.to_thread.run_sync(nodes[LONE].start)
        lone = await probe_lone(lan, LONE)
        v.say(f"lone cold start of node {LONE}: answers {dict(lone['codes'])}, logins {lone['logins']}, "
              f"registrations {lone['registered']}")
        v.check("2. lone cold start: never BAD_CREDENTIALS or NO_SUCH_USER",
                not (lone["codes"].keys() & {"BAD_CREDENTIALS", "NO_SUCH_USER"}), f"answers: {dict(lone['codes'])}")
        v.check("2. lone cold start: answers UNAVAILABLE", set(lone["codes"]) == {"UNAVAILABLE"},
                f"answers: {dict(lone['codes'])}")
        v.check("2. lone cold start: logs no one in", not lone["logins"], f"logged in: {lone['logins']}")
        v.check("2. lone cold start: accepts no registration", not lone["registered"],
                f"registered: {lone['registered']}")
        await start_all([n for n in nodes if n.i != LONE])  # no --join: each rejoins the members it knew
        rejoined = await wait_whole(nodes, NODES)
        v.say(f"the other four started without --join: one ring again in {rejoined:.1f} s")
        after = await probe_after_lone(lan)
        v.check("2. lone cold start: accepts no registration", after["ok"], after["detail"])

        # --- 3. a 0.2 s restart of a user's owner with a live terminal elsewhere ---
        live = await quick_owner_restart(lan, nodes, indexer, rec, v)

        # --- 4. one repair pass, then the checker ----------------------------
        await wait_repair_passes(nodes, v)
        await check_histories(lan, rec, v)
        check_replicas(nodes, indexer, Sealer(keys.storage), rec, v)
        found = conflicts_logged(nodes)
        acked_slots = {(ids.parse_conversation(a["conv"]).hex(), a["seq"]) for a in rec.acks}
        at_acked = sorted(c for c in found if c[0] == "conversation" and (c[1], c[2]) in acked_slots)
        # What repair logs as "held N slot(s) with different values" is what it met *before* it merged: a slot
        # where one replica held a write that was never acknowledged (it missed its quorum and its undo did not
        # reach that replica, or its owner was killed between storing and copying it: docs/consistency.md,
        # "Limits") and another the value the next owner numbered there. That is allowed; the promise is about
        # acknowledged messages *after* repair, and check_replicas and check_histories assert it exactly: no
        # (conversation, seq) acknowledged for two messages; on every node, an acknowledged seq holds its
        # acknowledged message or nothing, and the acknowledged message sits at no other seq; the R replicas of
        # every conversation and every inbox are equal, with each acknowledged message once in its
        # recipient's inbox on each. A conflict logged at an acknowledged position therefore passed only if its
        # other value was never acknowledged and gave way. So the count is reported, not asserted.
        v.say(f"repair met {len(found)} distinct slots held with two values on two replicas before merging "
              f"({len(at_acked)} at acknowledged positions, each since holding the acknowledged message on every "
              f"node): {sorted(found)[:6]}")
        small = small_rings_established(nodes)
        v.check("ring epochs: none accepted by a majority with fewer members than a majority of the voters",
                not small, f"{small}")
        v.check("3. quick owner restart: the live terminal receives every message", live["missing"] == [],
                f"missing {live['missing']} of {live['sent']} (received {live['received']})")
        v.check("load: no send refused with an error a retry cannot fix", not rec.errors, f"errors: {rec.errors[:10]}")
        v.say(
            f"summary: {len(rec.acks)} acknowledgements ({phase1_acks} under the split phase, "
            f"{sum(a['duplicate'] for a in rec.acks)} as duplicates of a retry), {len(rec.refusals)} UNAVAILABLE "
            f"refusals, {len(rec.timeouts)} timed-out attempts, {len(rec.unacked)} messages never acknowledged, "
            f"{len(rec.errors)} other errors; {time.monotonic() - began:.0f} s in all"
        )
    finally:
        for n in nodes:
            n.kill()
    _verdict(v, nodes)


def _after(t: float | None, start: float) -> str:
    return "never" if t is None else f"{t - start:.2f} s"


def _served_again(times: list[float], start: float, end: float) -> str:
    """The end of the longest pause between this client's acks from the split on."""
    window = [start] + [t for t in times if start < t <= end]
    if len(window) < 2:
        return "not before the heal"
    gaps = [(b - a, b) for a, b in zip(window, window[1:], strict=False)]
    gap, at = max(gaps)
    return f"{at - start:.2f} s after the split (longest pause {gap:.2f} s)"


def _verdict(v: Verdict, nodes: list[Node]) -> None:
    if not v.broken:
        return
    text = "\n".join(f"{step}: {'; '.join(d[:3])}" for step, d in v.broken.items())
    logs = "\n".join(f"--- node {n.i} ---\n{n.log_tail(15)}" for n in nodes)
    pytest.fail(f"promises broken:\n{text}\n{logs}")


# --- step 2: the lone node ------------------------------------------------------


async def probe_lone(lan: Lan, i: int, rounds: int = 6) -> dict:
    """Log every user in with the right password, register an existing name
    with another password and a new name: every answer's code, and any success."""
    codes: Counter[str] = Counter()
    logins: list[str] = []
    registered: list[str] = []
    dial = connector(lan.ns(i))
    with trio.move_on_after(30):
        await _probe_rounds(dial, rounds, codes, logins, registered)
    return {"codes": codes, "logins": logins, "registered": registered}


async def _probe_rounds(dial, rounds: int, codes: Counter[str], logins: list[str], registered: list[str]) -> None:  # noqa: ANN001
    for r in range(rounds):
        for user in USERS:
            try:
                with trio.fail_after(ATTEMPT_S):
                    async with timpy.connect(dial, user, PASSWORD, sync=False):
                        logins.append(user)
            except timpy.RemoteError as exc:
                codes[exc.code.name] += 1
            except (OSError, trio.TooSlowError) as exc:
                codes[type(exc).__name__] += 1
        for name, password in (("u0", "another-password"), (f"fresh{r}", PASSWORD)):
            try:
                with trio.fail_after(ATTEMPT_S):
                    await timpy.register(dial, name, password)
                registered.append(name)
            except timpy.RemoteError as exc:
                codes[exc.code.name] += 1
            except (OSError, trio.TooSlowError) as exc:
                codes[type(exc).__name__] += 1
        await trio.sleep(0.5)


async def probe_after_lone(lan: Lan) -> dict:
    """With everyone back: u0's password is still its own, and no fresh name exists."""
    problems: list[str] = []
    dial = connector(lan.ns(1))
    for _ in range(20):  # the whole cluster is back; an owner may still be catching up
        problems = []
        try:
            with trio.fail_after(ATTEMPT_S):
                async with timpy.connect(dial, "u0", PASSWORD, sync=False):
                    pass
        except (timpy.RemoteError, trio.TooSlowError) as exc:
            problems.append(f"u0 cannot log in with its password: {exc}")
        for name, password in (("u0", "another-password"), ("fresh0", PASSWORD)):
            try:
                with trio.fail_after(ATTEMPT_S):
                    async with timpy.connect(dial, name, password, sync=False):
                        problems.append(f"{name} logs in with the password the lone node was asked to register")
            except timpy.RemoteError as exc:
                if exc.code == timpy.Code.UNAVAILABLE:
                    problems.append(f"{name}: still UNAVAILABLE")
            except trio.TooSlowError:
                problems.append(f"{name}: no answer")
        if not any("UNAVAILABLE" in p or "no answer" in p for p in problems):
            break
        await trio.sleep(0.5)
    return {"ok": not problems, "detail": "; ".join(problems)}


# --- step 3: the owner restarted in 0.2 s ------------------------------------------


async def quick_owner_restart(lan: Lan, nodes: list[Node], indexer: BlindIndexer, rec: Record, v: Verdict) -> dict:
    ring = HashRing.of([n.info["node_id"] for n in nodes])
    user = "u7"
    owner = next(n for n in nodes if n.info["node_id"] == ring.owner(ids.user_id(indexer, user)))
    terminal_node, sender_node = (owner.i + 1) % NODES, (owner.i + 2) % NODES
    sender_user = next(u for i, u in enumerate(USERS) if i % NODES == sender_node and u != user)
    sender = Sender(lan, sender_user, sender_node, user, rec)
    bodies: list[str] = []
    received: set[str] = set()
    live_closed: list[str] = []
    async with trio.open_nursery() as nursery:
        deaths = sum(_dead_lines(n, owner.info["node_id"]) for n in nodes if n is not owner)
        async with timpy.connect(connector(lan.ns(terminal_node)), user, PASSWORD, device="live") as term:

            async def read() -> None:
                try:
                    async for m in term.events():
                        received.add(m.body.decode(errors="replace"))
                except timpy.RemoteError as exc:
                    live_closed.append(str(exc))

            nursery.start_soon(read)
            await term.wait_synced()
            for k in range(LIVE_BEFORE + LIVE_AFTER):
                if k == LIVE_BEFORE:
                    owner.kill()
                    await trio.sleep(0.2)
                    restart_t = time.monotonic()
                    await trio.to_thread.run_sync(owner.start)
                    v.say(f"owner of {user} (node {owner.i}) killed and started again; ready after "
                          f"{time.monotonic() - restart_t:.1f} s; live terminal on node {terminal_node}")
                body = f"live-{k}-{os.urandom(4).hex()}"
                bodies.append(body)
                await sender.send_one(nursery, f"live-{sender_user}-{k}", body, time.monotonic() + 60)
            with trio.move_on_after(30):
                while not set(bodies) <= received and not live_closed:
                    await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    deaths = sum(_dead_lines(n, owner.info["node_id"]) for n in nodes if n is not owner) - deaths
    v.say(f"the restarted owner was declared dead {deaths} time(s) by the others meanwhile "
          f"({'a ring change' if deaths else 'no ring change'})")
    missing = [b for b in bodies if b not in received]
    if live_closed:
        missing.append(f"(the live connection closed: {live_closed[0]})")
    v.say(f"live terminal: received {len(bodies) - len(missing)} of {len(bodies)} messages sent around the restart")
    return {"missing": missing, "sent": len(bodies), "received": len(set(bodies) & received)}


def _dead_lines(node: Node, node_id: str) -> int:
    return sum(f"member {node_id} at" in line and " is dead" in line
               for line in (node.work / "node.log").read_text(errors="replace").splitlines())


# --- step 4: repair and the checker ---------------------------------------------------


_CONFLICT = re.compile(
    r"repair: (conversation|account) ([0-9a-f]+) held \d+ slot\(s\) with different values here and on \S+ \(([^)]*)\)"
)


def conflicts_logged(nodes: list[Node]) -> set[tuple[str, str, int]]:
    """(kind, key hex, slot) of every slot repair found held with two values
    (from the logs, which outlive restarts; the status counters do not)."""
    out: set[tuple[str, str, int]] = set()
    for n in nodes:
        for m in _CONFLICT.finditer((n.work / "node.log").read_text(errors="replace")):
            out.update((m.group(1), m.group(2), int(x)) for x in m.group(3).split(", ") if x.isdigit())
    return out


def small_rings_established(nodes: list[Node]) -> list[str]:
    """Epochs whose ring holds fewer members than a majority of the voters
    and that some node logged as accepted by a majority (e.g. a former
    minority's stale proposal accepted after the heal). Under checked
    acceptance every acceptor is a ring member, so there are none."""
    found: set[str] = set()
    pattern = re.compile(r"ring epoch (\d+): (\d+) voters, (\d+) ring members|ring epoch (\d+) accepted by a majority")
    for n in nodes:
        sizes: dict[int, tuple[int, int]] = {}  # this node's view: one number may name two rings on two sides
        for m in pattern.finditer((n.work / "node.log").read_text(errors="replace")):
            if m.group(1):
                sizes[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
            elif int(m.group(4)) in sizes:
                voters, members = sizes[int(m.group(4))]
                if voters >= 3 and members <= voters // 2:
                    found.add(f"epoch {m.group(4)}: {members} of {voters}, proposed by node {n.i}")
    return sorted(found)
