"""``timpy bench flood``: the anchors' flood load against a node.

The load is the one ``../shared/anchors`` drives Prosody and ejabberd with:
C clients log in over plain TCP (not measured), then every client writes its
M messages back to back, with no window (it never waits for an ack, only
for the socket write), each to a uniformly random other client, ~100 bytes
on the wire, carrying its send time. Throughput is delivered messages over
the time from the first send to the last delivery; latency is receipt time
minus send time, over every delivered message (ranks floor(0.5 n) and
floor(0.99 n) of the sorted list). A message the node echoes to its sender's
own terminal is not a delivery.

The generator speaks the client protocol on raw frames (one trio loop, no
client library), and finds the send time in a delivery's bytes without
decoding it, so it stays far below the node's cost per message;
``--echo`` runs it against a minimal echo server that stores nothing, to
show its own ceiling.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import trio
from rich.progress import Progress

from timpy.cli.bench.common import (
    RawConn,
    console,
    cpu_seconds,
    loadavg,
    log_in_all,
    login_raw,
    progress_bar,
    raise_fd_limit,
    register_users,
    self_cpu,
    show,
    start_node_process,
    stop_node_process,
)
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes

PASSWORD = "flood-password"
_MAGIC = b"\x01flood;"  # starts every body: _MAGIC, recipient index, ";", send time
# A delivery frame: rid (i64, field 1, 0 for a push), then Frame.delivery (struct, field 14).
# Other frames can quote a message too (the conversation list's conversation_entry
# notice carries the last message): they are not deliveries and are not counted.
_DELIVERY_FIELD_AT_11 = b"\x0c\x00\x0e"
# The node is measured as it runs, not its per-connection rate limits (the
# anchors run without any): the flood writes every message at once.
_NODE_LIMITS = (
    "[limits]\nrate_per_connection = 1000000.0\nburst_per_connection = 1000000\n"
    "user_message_rate = 1000000.0\nuser_message_burst = 1000000\nhandshake_timeout = 300.0\n"
    "push_queue = 65536\nmax_connections = 20000\n"
)


def _rank(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _login_at(host: str, port: int) -> Callable[[str], Awaitable[RawConn]]:
    return lambda name: login_raw(host, port, name, PASSWORD, "flood")


def _send_template(rid: int, client_id: str, recipient: str, to: int) -> tuple[bytes, bytes]:
    """A send frame (with its length prefix) split around the 8 send-time bytes."""
    marker = b"\xfe\xed\xfa\xce\xfe\xed\xfa\xce"
    body = _MAGIC + b"%08d;" % to + marker + b"." * 40
    data = frame_bytes(wp.encode(wp.make_frame(
        "send", rid=rid, message=wp.Message(client_id=client_id, recipient=recipient, body=body, kind=0)
    )))
    head, _, tail = data.partition(marker)
    return head, tail


async def flood(host: str, port: int, clients: int, messages: int, timeout: float, node_pid: int | None) -> dict:
    names = [f"u{i}" for i in range(1, clients + 1)]
    total = clients * messages
    latencies: list[float] = []
    errors: dict[str, int] = {}
    first_send = last_delivery = 0.0
    done = trio.Event()
    pack_time = __import__("struct").Struct(">d")
    with progress_bar() as progress:
        await register_users(host, port, names, PASSWORD, progress)
        login_started = time.perf_counter()
        conns = await log_in_all(names, _login_at(host, port), 1, progress, "logging in")  # one at a time
        login_s = time.perf_counter() - login_started
        # Every frame is built before the clock starts; the send time is spliced in.
        rnd = random.Random()
        plans: list[list[tuple[bytes, bytes]]] = []
        for i in range(clients):
            plan = []
            for k in range(messages):
                to = rnd.randrange(clients)
                if to == i:
                    to = (to + 1) % clients
                plan.append(_send_template(k + 10, f"f{i}-{k}-{rnd.getrandbits(32):08x}", names[to], to))
            plans.append(plan)
        await trio.sleep(0.5)
        task = progress.add_task("messages delivered", total=total)

        async def reader(i: int, conn: RawConn) -> None:
            nonlocal last_delivery
            me = b"%08d;" % i
            got = len(latencies)
            for frame in conn.pending:  # already read during login: none are deliveries counted
                _ = frame
            conn.pending.clear()
            while True:
                data = await conn.stream.receive_some(65536)
                if not data:
                    return
                now = time.perf_counter()
                for body in conn.decoder.feed(data):
                    at = body.find(_MAGIC)
                    if at < 0:
                        frame = wp.decode(body)
                        if frame.error is not None:
                            key = frame.error.text or "?"
                            errors[key] = errors.get(key, 0) + 1
                        continue
                    at += len(_MAGIC)
                    if body[at : at + 9] != me:
                        continue  # the echo of this client's own message to its own terminal
                    if body[11:14] != _DELIVERY_FIELD_AT_11 and wp.decode(body).delivery is None:
                        continue  # a notice quoting the message, not its delivery
                    latencies.append(now - pack_time.unpack_from(body, at + 9)[0])
                    last_delivery = now
                got = len(latencies)
                progress.update(task, completed=got)
                if got >= total:
                    done.set()

        async def writer(conn: RawConn, plan: list[tuple[bytes, bytes]]) -> None:
            send_all, stamp = conn.stream.send_all, pack_time.pack
            try:
                for head, tail in plan:
                    await send_all(head + stamp(time.perf_counter()) + tail)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                errors["the node closed the connection"] = errors.get("the node closed the connection", 0) + 1

        node_cpu0 = cpu_seconds(node_pid) if node_pid else float("nan")
        self_cpu0 = self_cpu()
        async with trio.open_nursery() as nursery:
            for i, conn in enumerate(conns):
                nursery.start_soon(reader, i, conn)
            first_send = time.perf_counter()
            for conn, plan in zip(conns, plans, strict=True):
                nursery.start_soon(writer, conn, plan)
            with trio.move_on_after(timeout):
                await done.wait()
            nursery.cancel_scope.cancel()
        node_cpu = (cpu_seconds(node_pid) if node_pid else float("nan")) - node_cpu0
        own_cpu = self_cpu() - self_cpu0
        for conn in conns:
            await conn.stream.aclose()
    got = len(latencies)
    elapsed = (last_delivery - first_send) if got else float("nan")
    latencies.sort()
    result = {
        "clients": clients,
        "messages_each": messages,
        "delivered": f"{got}/{total}",
        "seconds": round(elapsed, 3),
        "messages_per_s": round(got / elapsed, 1) if got else 0.0,
        "p50_ms": round(_rank(latencies, 0.5) * 1000, 1),
        "p99_ms": round(_rank(latencies, 0.99) * 1000, 1),
        "node_cpu_ms_per_message": round(1000 * node_cpu / got, 3) if got and node_pid else None,
        "generator_cpu_ms_per_message": round(1000 * own_cpu / got, 3) if got else None,
        "node_cpu_pct": round(100 * node_cpu / elapsed) if got and node_pid else None,
        "generator_cpu_pct": round(100 * own_cpu / elapsed) if got else None,
        "login_s": round(login_s, 2),
    }
    if errors:
        result["errors"] = errors
    return result


async def _prefill(workdir: Path, count: int, clients: int) -> float:
    """Store ``count`` messages between random pairs of the bench users,
    straight through the repository's batch write (the node is stopped)."""
    from timpy.crypto.blind import BlindIndexer
    from timpy.crypto.keys import load_or_create_cluster_key
    from timpy.crypto.seal import Sealer
    from timpy.im import ids, kinds
    from timpy.im.search import plan_for, token_key
    from timpy.store.engine import sqlite_engine
    from timpy.store.repository import Repository
    from timpy.store.rows import NewMessage
    from timpy.wire.messages import pack_content

    keys, _ = load_or_create_cluster_key(workdir / "data" / "cluster.key", create=False)
    indexer = BlindIndexer(keys.index)
    repo = Repository(sqlite_engine(workdir / "data" / "timpy.sqlite3"), Sealer(keys.storage), kinds.effect_of)
    names = [f"u{i}" for i in range(1, clients + 1)]
    uids = [ids.user_id(indexer, n) for n in names]
    rnd = random.Random()
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("prefilling the store", total=count)
        done = 0
        while done < count:
            batch = []
            for _ in range(min(2000, count - done)):
                a, b = rnd.sample(range(clients), 2)
                client_id = f"p{done + len(batch)}-{rnd.getrandbits(48):012x}"
                batch.append(NewMessage(
                    conv_id=ids.direct_conversation(indexer, uids[a], uids[b]),
                    members=(uids[a], uids[b]),
                    sender_id=uids[a],
                    dedup=ids.dedup_index(indexer, uids[a], client_id),
                    created_ms=int(time.time() * 1000),
                    content=pack_content(client_id, names[a], names[b], 0, b"history " * 8, {}),
                ))
            await trio.to_thread.run_sync(repo.write_batch, batch)
            done += len(batch)
            progress.update(task, completed=done)
        # A node indexes what it stores for search as it goes (``Search``):
        # history left unindexed would be indexed during the flood instead.
        convs = sorted({ids.direct_conversation(indexer, a, b) for a in uids for b in uids if a < b})
        task = progress.add_task("indexing it for search", total=len(convs))
        for start in range(0, len(convs), 200):
            chunk = [(c, plan_for(token_key(indexer, c))) for c in convs[start:start + 200]]
            for _ in range(1_000_000):  # bounded: each round indexes up to 5,000 messages
                left = set(await trio.to_thread.run_sync(repo.search_index_many, chunk, 5000))
                if not left:
                    break
                chunk = [(c, p) for c, p in chunk if c in left]
            progress.update(task, completed=min(len(convs), start + 200))
    repo.close()
    return time.perf_counter() - started


async def run_flood(
    clients: int, messages: int, prefill: int, memory: bool, url: str | None, echo: bool, timeout: float,
    peer: bool, node_pid: int | None = None,
) -> dict:
    if clients < 2:
        raise click.UsageError("--clients must be at least 2")
    if prefill and (memory or url or echo):
        raise click.UsageError("--prefill needs the bench's own node on SQLite (not --memory, --url or --echo)")
    raise_fd_limit(clients + 100)
    load = loadavg()
    scenario = "flood 1:1"
    if url:
        if not url.startswith("tcp://"):
            raise click.UsageError("--url must be tcp://HOST:PORT (the flood runs over plain TCP)")
        host, _, port = url[len("tcp://"):].rpartition(":")
        figures = await flood(host, int(port), clients, messages, timeout, node_pid)
        storage = f"node at {url}"
    else:
        with tempfile.TemporaryDirectory(prefix="timpy-flood-") as tmp:
            workdir = Path(tmp)
            if echo:
                proc, info = await _start_echo(workdir)
                storage = "echo server (stores nothing, routes by name)"
            else:
                proc, info = await start_node_process(workdir, memory, _NODE_LIMITS, peer=peer)
                storage = "memory" if memory else "sqlite (synchronous=FULL)"
                if not peer:
                    storage += ", standalone (peer off)"
            host, _, port = info["tcp"].rpartition(":")
            try:
                if prefill:
                    with Progress(console=console, transient=True) as progress:  # the prefill needs the accounts
                        await register_users(host, int(port), [f"u{i}" for i in range(1, clients + 1)], PASSWORD, progress)
                    await stop_node_process(proc)
                    took = await _prefill(workdir, prefill, clients)
                    console.print(f"prefilled {prefill:,} messages in {took:.1f} s")
                    (workdir / "ready.json").unlink()
                    proc, info = await start_node_process(workdir, memory, _NODE_LIMITS, peer=peer)
                    host, _, port = info["tcp"].rpartition(":")
                    storage += f", {prefill:,} messages stored before"
                figures = await flood(host, int(port), clients, messages, timeout, proc.pid)
            finally:
                await stop_node_process(proc)
    return {
        "scenario": scenario,
        "target": storage,
        **figures,
        "loadavg_at_start": load,
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
    }


# --- the generator's ceiling: a minimal echo server ---------------------------


async def _start_echo(workdir: Path) -> tuple[trio.Process, dict]:
    ready = workdir / "ready.json"
    log = open(workdir / "echo.log", "wb")  # noqa: SIM115 - closed with the process
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", f"import trio, timpy.cli.bench.flood as f; trio.run(f.serve_echo, {str(ready)!r})"],
        stdout=log, stderr=log,
    )
    with trio.fail_after(30):
        while not ready.exists():
            if proc.poll() is not None:
                raise click.ClickException(f"the echo server exited; see {workdir / 'echo.log'}")
            await trio.sleep(0.05)
    return proc, json.loads(ready.read_text())


async def serve_echo(ready_file: str) -> None:
    """Speaks just enough of the client protocol to log clients in and pass
    each send to its recipient as a delivery (and ack it); stores nothing."""
    online: dict[str, tuple[trio.SocketStream, trio.StrictFIFOLock]] = {}

    async def handle(stream: trio.SocketStream) -> None:
        lock = trio.StrictFIFOLock()  # one writer at a time per stream
        decoder = FrameDecoder(1 << 24)
        pos = 0
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for body in decoder.feed(data):
                frame = wp.decode(body)
                rid = frame.rid
                if frame.hello is not None:
                    out = wp.make_frame("welcome", rid=rid, version=wp.PROTOCOL_VERSION, node_id="echo")
                elif frame.register_ is not None:
                    out = wp.make_frame("ok", rid=rid)
                elif frame.login is not None:
                    online[frame.login.name] = (stream, lock)
                    out = wp.make_frame("login_ok", rid=rid, user=frame.login.name, device="flood")
                elif frame.send is not None:
                    m = frame.send.message
                    pos += 1
                    target = online.get(m.recipient)
                    if target is not None:
                        m.seq, m.server_time = pos, 0
                        out = frame_bytes(wp.encode(wp.make_frame("delivery", pos=pos, message=m)))
                        try:
                            async with target[1]:
                                await target[0].send_all(out)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                    out = wp.make_frame("ack", rid=rid, client_id=m.client_id, seq=pos)
                else:
                    continue
                async with lock:
                    await stream.send_all(frame_bytes(wp.encode(out)))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _guard(handle), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        Path(ready_file + ".tmp").write_text(json.dumps({"tcp": f"127.0.0.1:{port}"}))
        os.replace(ready_file + ".tmp", ready_file)


def _guard(handler):  # noqa: ANN001, ANN202
    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    return run


@click.command("flood")
@click.option("--clients", default=200, show_default=True, help="Client connections, each a user.")
@click.option("--messages", default=200, show_default=True, help="Messages each client writes, all at once.")
@click.option("--prefill", default=0, show_default=True,
              help="Messages stored (through the repository, in bulk, the node stopped) before the flood.")
@click.option("--memory", is_flag=True, help="Run the node with --memory instead of SQLite.")
@click.option("--standalone", is_flag=True, help="Run the node with its peer listener off.")
@click.option("--url", help="Flood a running node at tcp://HOST:PORT instead (users u1..uC, password flood-password).")
@click.option("--node-pid", type=int, help="With --url: the node's process id, to report its CPU use.")
@click.option("--echo", is_flag=True, help="Flood a minimal echo server instead: the generator's own ceiling.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait after the first send.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def flood_cmd(
    clients: int, messages: int, prefill: int, memory: bool, standalone: bool, url: str | None,
    node_pid: int | None, echo: bool, timeout: float, as_json: bool,
) -> None:
    """The anchors' flood: every client writes all its messages at once to random others."""
    show(
        trio.run(run_flood, clients, messages, prefill, memory, url, echo, timeout, not standalone, node_pid),
        as_json,
    )
