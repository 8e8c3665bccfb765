"""``timpy bench failover``: what clients see while a node dies.

Starts three real ``timpy node`` processes on loopback (default membership
timing), registers users, and keeps sending, through a surviving node, 1:1
messages in conversations the victim owns, and logging in, through a surviving
node, users the victim owns. Then it kills the victim with SIGKILL and reports,
for the seconds after, how long each send and login took, how it ended
(stored, UNAVAILABLE with which sentence, ...), and when they worked again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import trio

import timpy
from timpy.cluster.ring import HashRing
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, decode_key
from timpy.im import ids

PASSWORD = "failover-password"
_FAST_HASH = "[security]\npassword_opslimit = 1\npassword_memlimit = 8192\n"


def _start(work: Path, key: Path, join: str | None) -> tuple[subprocess.Popen[bytes], dict]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "node.toml"
    config.write_text(
        f'data_dir = "data"\nmemory = true\nlisten = "127.0.0.1:0"\nws = "off"\nready_file = "ready.json"\n'
        f'cluster_key_file = "{key}"\n' + _FAST_HASH + '[admin]\nlisten = "off"\n'
        '[cluster]\nlisten = "127.0.0.1:0"\n' + (f'join = ["{join}"]\n' if join else "")
    )
    log = open(work / "node.log", "wb")  # noqa: SIM115 - closed when the process ends
    env = {k: v for k, v in os.environ.items() if k != "TIMPY_CLUSTER_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "timpy", "node", "--config", str(config)],
                            stdout=log, stderr=log, env=env)
    ready = work / "ready.json"
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"a node did not start; see {work / 'node.log'}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


async def _wait_members(peer: str, key: Path, count: int) -> None:
    from timpy.cli.cluster import ask_node

    with trio.fail_after(60):
        while True:
            info = await ask_node(peer, key)
            if sum(m["state"] == "alive" for m in info["members"]) == count:
                return
            await trio.sleep(0.1)


async def _measure(base: Path, seconds: float, pairs: int) -> dict:
    key = base / "cluster.key"
    subprocess.run([sys.executable, "-m", "timpy", "keys", "new", str(key)], check=True, capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        infos = []
        for i in range(3):
            proc, info = _start(base / f"n{i}", key, infos[0]["peer"] if infos else None)
            procs.append(proc)
            infos.append(info)
        for info in infos:
            await _wait_members(info["peer"], key, 3)
        keys = ClusterKeys(decode_key(key.read_text(), str(key)))
        indexer = BlindIndexer(keys.index)
        ring = HashRing.of([info["node_id"] for info in infos])
        victim = 2
        survivor_url = f"tcp://{infos[0]['tcp']}"
        other_url = f"tcp://{infos[1]['tcp']}"
        victim_id = infos[victim]["node_id"]
        owned = [f"u{i}" for i in range(400) if ring.owner(ids.user_id(indexer, f"u{i}")) == victim_id][:pairs]
        senders = [f"s{i}" for i in range(400)]
        conv_pairs: list[tuple[str, str]] = []
        for name in owned:  # a sender whose conversation with ``name`` the victim owns
            for s in senders:
                conv = ids.direct_conversation(indexer, ids.user_id(indexer, s), ids.user_id(indexer, name))
                if ring.owner(conv) == victim_id and s not in {p[0] for p in conv_pairs}:
                    conv_pairs.append((s, name))
                    break
        for s, name in conv_pairs:
            await timpy.register(survivor_url, s, PASSWORD)
            await timpy.register(survivor_url, name, PASSWORD)

        sends: list[dict] = []
        logins: list[dict] = []
        killed_at = 0.0

        async def sender(s: str, to: str) -> None:
            async with timpy.connect([survivor_url, other_url], s, PASSWORD, sync=False) as client:
                i = 0
                while trio.current_time() < killed_at + seconds:
                    i += 1
                    t0 = trio.current_time()
                    try:
                        await client.send(to, f"m{i}", client_id=f"{s}-{i}")
                        outcome = "stored"
                    except timpy.RemoteError as exc:
                        outcome = f"{exc.code.name}: {exc.text}"
                    sends.append({"at": t0 - killed_at, "took": trio.current_time() - t0, "outcome": outcome})
                    await trio.sleep(0.2)

        async def login_loop(name: str) -> None:
            while trio.current_time() < killed_at + seconds:
                t0 = trio.current_time()
                try:
                    async with timpy.connect(survivor_url, name, PASSWORD, sync=False):
                        outcome = "logged in"
                except timpy.RemoteError as exc:
                    outcome = f"{exc.code.name}: {exc.text}"
                logins.append({"at": t0 - killed_at, "took": trio.current_time() - t0, "outcome": outcome})
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            killed_at = trio.current_time() + 2.0
            for s, to in conv_pairs:
                nursery.start_soon(sender, s, to)
            for name in owned[:3]:
                nursery.start_soon(login_loop, name)
            await trio.sleep_until(killed_at)
            procs[victim].send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def summary(rows: list[dict], ok: str) -> dict:
        after = [r for r in rows if r["at"] >= 0]
        failed = [r for r in after if r["outcome"] != ok]
        recovered = [r for r in after if r["outcome"] == ok and r["at"] > (max((f["at"] for f in failed), default=0))]
        return {
            "attempts after the kill": len(after),
            "longest (s)": round(max((r["took"] for r in after), default=0.0), 2),
            "failed": len(failed),
            "failures": sorted({r["outcome"] for r in failed}),
            "works again from (s after the kill)": round(min((r["at"] for r in recovered), default=-1.0), 2),
        }

    return {"sends (through a survivor, conversations the victim owned)": summary(sends, "stored"),
            "logins (through a survivor, users the victim owned)": summary(logins, "logged in")}


@click.command("failover")
@click.option("--seconds", default=20.0, show_default=True, help="How long to watch after the kill.")
@click.option("--pairs", default=3, show_default=True, help="Sender/recipient pairs sending all along.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def failover_cmd(seconds: float, pairs: int, as_json: bool) -> None:
    """Three node processes, one killed with SIGKILL: what sends and logins see."""
    with tempfile.TemporaryDirectory(prefix="timpy-failover-") as tmp:
        result = trio.run(_measure, Path(tmp), seconds, pairs)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for title, figures in result.items():
        click.echo(title)
        for name, value in figures.items():
            click.echo(f"  {name}: {value}")
