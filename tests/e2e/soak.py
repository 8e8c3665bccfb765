"""A long chaos run for developers (not collected by pytest): the five real
nodes and the load of ``test_partition_processes``, then ``--chaos`` seconds
of random faults drawn from ``--seed`` (3/2 and 4/1 splits, a bridge node
that sees both sides, kills with a later restart, 0.2 s restarts), then a
heal, one repair pass and the same checker over every acknowledgement and
every replica. Run as root from the project root:

    python -m tests.e2e.soak --seed 7707 --chaos 420
    python -m tests.e2e.soak --one-split 30     # one 3/2 split: what each side acknowledged

It uses 198.18.60.0/24 and namespaces named ``soak*``, and tears them down.
Exit status 0 when every promise held; the node logs stay in ``--keep``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import timpy
from tests.conftest import PASSWORD
from tests.e2e.netns import IP, IPTABLES, why_not_available
from tests.support import split_cluster as tp
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, decode_key
from timpy.crypto.seal import Sealer


class SoakLan(tp.Lan):
    def __init__(self) -> None:
        super().__init__(prefix="soak")

    @staticmethod
    def ip(i: int) -> str:
        return f"198.18.60.{10 + i}"

    def bridge(self, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        """``split`` but the first node of ``a`` still reaches every node of ``b``."""
        keep = a[0]
        for side, other in ((a, b), (b, a)):
            for i in side:
                self.cut.append(self.ns(i))
                for j in other:
                    if keep in (i, j):
                        continue
                    tp._run(IP, "netns", "exec", self.ns(i), IPTABLES, "-A", "INPUT", "-s", self.ip(j), "-j", "DROP")
                    tp._run(IP, "netns", "exec", self.ns(i), IPTABLES, "-A", "OUTPUT", "-d", self.ip(j), "-j", "DROP")


async def chaos(lan: SoakLan, nodes: list[tp.Node], rnd: random.Random, seconds: float, v: tp.Verdict) -> None:
    end = time.monotonic() + seconds
    cycle = 0
    while time.monotonic() < end and cycle < 1000:
        cycle += 1
        order = list(range(tp.NODES))
        rnd.shuffle(order)
        kind = rnd.choice(["split32", "split41", "bridge", "kill", "quick", "calm"])
        hold = rnd.uniform(3, 20)
        v.say(f"[{time.strftime('%H:%M:%S')}] cycle {cycle}: {kind} {order} for {hold:.1f} s")
        if kind in ("split32", "split41", "bridge"):
            cut = 2 if kind != "split41" else 1
            a, b = tuple(order[cut:]), tuple(order[:cut])
            await trio.to_thread.run_sync(lan.bridge if kind == "bridge" else lan.split, a, b)
            await trio.sleep(hold)
            await trio.to_thread.run_sync(lan.heal)
        elif kind == "kill":
            victim = nodes[order[0]]
            victim.kill()
            await trio.sleep(hold)
            await trio.to_thread.run_sync(victim.start)
        elif kind == "quick":
            victim = nodes[order[0]]
            victim.kill()
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(victim.start)
            await trio.sleep(hold)
        else:
            await trio.sleep(hold)
        await trio.sleep(rnd.uniform(1, 6))


async def one_split(lan: SoakLan, seconds: float, rec: tp.Record, v: tp.Verdict) -> None:
    """``--one-split``: a single 3/2 split (nodes 0-2 against 3-4); what each side acknowledged meanwhile."""
    began = len(rec.acks)
    split_t = time.time()
    await trio.to_thread.run_sync(lan.split, tp.MAJORITY, tp.MINORITY)
    await trio.sleep(seconds)
    heal_t = time.time()
    await trio.to_thread.run_sync(lan.heal)
    during = [a for a in rec.acks[began:] if split_t <= a["t"] <= heal_t]
    for side, name in ((tp.MAJORITY, "majority"), (tp.MINORITY, "minority")):
        acks = sorted(a["t"] - split_t for a in during if a["node"] in side)
        refused = sum(1 for r in rec.refusals if r[1] in side and split_t <= r[2] <= heal_t)
        v.say(f"{seconds:.0f} s split, {name} side: {len(acks)} sends acknowledged "
              f"(first {acks[0]:.2f} s after the split)" if acks else f"{seconds:.0f} s split, {name} side: none acknowledged")
        v.say(f"  {refused} UNAVAILABLE refusals there")


def check_digests(nodes: list[tp.Node], keys: ClusterKeys, v: tp.Verdict) -> None:
    """The R replicas of every key have equal repair digests (stamps and
    times included, which the row checker does not compare): else every
    later repair pass compares the key again."""
    from timpy.cluster.ring import HashRing
    from timpy.im import kinds
    from timpy.store.engine import sqlite_engine
    from timpy.store.repository import Repository

    ring = HashRing.of([n.info["node_id"] for n in nodes])
    repos = {n.info["node_id"]: Repository(sqlite_engine(n.work / "data" / "timpy.sqlite3"), Sealer(keys.storage),
                                           kinds.effect_of) for n in nodes}
    differ = []
    for kind in ("conv", "user"):
        held = {k for r in repos.values() for k in r.repair_keys(kind, b"", None, 100_000)}
        for k in sorted(held):
            roots = {repos[n].repair_roots(kind, [k]).get(k) for n in ring.replicas(k, 3)}
            if len(roots) > 1:
                differ.append(f"{kind} {k.hex()[:12]}")
    for r in repos.values():
        r.engine.dispose()
    v.say(f"repair digests: {len(differ)} keys whose replicas' digests differ after the pass")
    v.check("replicas: equal repair digests after one pass", not differ, f"{differ[:5]}")


async def soak(seed: int, seconds: float, work: Path, split_s: float = 0.0) -> int:
    reason = why_not_available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    lan = SoakLan()
    rnd = random.Random(seed)
    key = work / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    keys = ClusterKeys(decode_key(key.read_text(), str(key)))
    indexer = BlindIndexer(keys.index)
    rec, v = tp.Record(), tp.Verdict()
    nodes: list[tp.Node] = []
    began = time.monotonic()
    try:
        lan.build()
        nodes = [tp.Node(lan, i, work / f"n{i}", key) for i in range(tp.NODES)]
        await trio.to_thread.run_sync(nodes[0].start)
        await tp.start_all(nodes[1:], nodes[0].peer)
        await tp.wait_whole(nodes, tp.NODES)
        for i, user in enumerate(tp.USERS):
            await timpy.register(tp.connector(lan.ns(i % tp.NODES)), user, PASSWORD)
        senders = [tp.Sender(lan, u, i % tp.NODES, tp.USERS[(i + 1) % len(tp.USERS)], rec)
                   for i, u in enumerate(tp.USERS)]
        stop = trio.Event()
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as load:
                for s in senders:
                    load.start_soon(s.run, sessions, stop, seconds + 600)
                await trio.sleep(3)
                if split_s:
                    await one_split(lan, split_s, rec, v)
                else:
                    await chaos(lan, nodes, rnd, seconds, v)
                await trio.to_thread.run_sync(lan.heal)
                for n in nodes:
                    if n.proc is None or n.proc.poll() is not None:
                        await trio.to_thread.run_sync(n.start)
                healed = await tp.wait_whole(nodes, tp.NODES, limit=300)
                v.say(f"healed: one ring again {healed:.1f} s after the last fault")
                await trio.sleep(5)
                stop.set()
            sessions.cancel_scope.cancel()
        await tp.wait_repair_passes(nodes, v)
        await tp.check_histories(lan, rec, v)
        tp.check_replicas(nodes, indexer, Sealer(keys.storage), rec, v)
        check_digests(nodes, keys, v)
        v.say(f"summary (seed {seed}): {len(rec.acks)} acknowledgements "
              f"({sum(a['duplicate'] for a in rec.acks)} as duplicates of a retry), {len(rec.refusals)} UNAVAILABLE "
              f"refusals, {len(rec.timeouts)} timed-out attempts, {len(rec.unacked)} never acknowledged, "
              f"{len(rec.errors)} other errors ({rec.errors[:3]}); {time.monotonic() - began:.0f} s in all")
    finally:
        for n in nodes:
            n.kill()
        lan.teardown()
    if v.broken:
        for step, details in v.broken.items():
            print(f"BROKEN {step}: {'; '.join(details[:5])}")
        return 1
    print("every promise held")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chaos", type=float, default=420.0, help="seconds of faults")
    parser.add_argument("--keep", type=Path, default=None, help="keep the node directories here")
    parser.add_argument("--one-split", type=float, default=0.0, metavar="SECONDS",
                        help="instead of the chaos: one 3/2 split this long, and what each side acknowledged")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    code = trio.run(soak, args.seed, args.chaos, work, args.one_split)
    if args.keep is None and code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"node directories kept in {work}")
    sys.exit(code)


if __name__ == "__main__":
    main()
