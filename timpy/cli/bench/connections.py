"""``timpy bench connections``: logins per second and memory per idle connection.

One node process (SQLite, synchronous=FULL). N users are registered first
(with the node's SQLite at synchronous=OFF, then restarted at FULL: setup,
not measured). Then N clients log in over TCP (or WebSocket with ``--ws``),
``--concurrency`` at a time, each on its own connection: hello and login in
one write, done when the node says its sync is done (a real client's login,
with its first sync of an empty inbox). The login rate is N over the time
from the first connect to the last sync. The node's resident memory
(VmRSS of /proc/PID/status) is read before the first connect and again after
the last login, once the node is idle; the difference over N is the memory
of one idle logged-in connection (TLS off).

The node runs argon2id at its minimum cost (1 pass, 8 KiB) so that the figure
is the node's own work per login; argon2id at the configured default cost
is timed apart, in this process, and reported beside it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import trio

from timpy.cli.bench.common import (
    cpu_seconds,
    loadavg,
    log_in_all,
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

PASSWORD = "conn-password"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise click.ClickException("no VmRSS for the node process")


def _argon_default_ms(rounds: int = 3) -> tuple[float, str]:
    """One argon2id verify at the configured defaults, in ms (median of ``rounds``)."""
    from timpy.config import SecurityConfig
    from timpy.crypto.passwords import hash_password, verify_password

    sec = SecurityConfig()
    stored = hash_password("a password of some length", sec.password_opslimit, sec.password_memlimit)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        verify_password(stored, "a password of some length")
        times.append(time.perf_counter() - t0)
    times.sort()
    cost = f"opslimit={sec.password_opslimit}, memlimit={sec.password_memlimit // (1024 * 1024)} MiB"
    return times[len(times) // 2] * 1000, cost


def _login_bytes(name: str) -> bytes:
    hello = wp.make_frame("hello", rid=1, version=wp.PROTOCOL_VERSION, agent="timpy-bench")
    login = wp.make_frame("login", rid=2, name=name, password=PASSWORD, device="bench")
    return frame_bytes(wp.encode(hello)) + frame_bytes(wp.encode(login))


def _check_login(body: bytes, name: str) -> bool:
    """True when this frame ends the login (its sync is done)."""
    frame = wp.decode(body)
    if frame.error is not None:
        raise click.ClickException(f"{name} could not log in: {frame.error.text}")
    return frame.sync_done is not None


async def _tcp_login(host: str, port: int, name: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(_login_bytes(name))
    decoder = FrameDecoder(1 << 24)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise click.ClickException(f"the node closed {name}'s connection during login")
        for body in decoder.feed(data):
            if _check_login(body, name):
                return stream


async def _ws_login(nursery: trio.Nursery, url: str, name: str) -> Any:
    from trio_websocket import connect_websocket_url

    ws = await connect_websocket_url(nursery, url)
    frames = _login_bytes(name)
    hello_len = int.from_bytes(frames[:4], "big")
    await ws.send_message(frames[4 : 4 + hello_len])
    await ws.send_message(frames[8 + hello_len :])
    while True:
        if _check_login(await ws.get_message(), name):
            return ws


async def run_connections(clients: int, ws: bool, concurrency: int) -> dict:
    raise_fd_limit(clients + 300)
    names = [f"c{i}" for i in range(clients)]
    load = loadavg()
    argon_ms, argon_cost = _argon_default_ms()
    limits = (
        f"[limits]\nmax_connections = {clients + 100}\nhandshake_timeout = 300.0\n"
        "rate_per_connection = 1000000.0\nburst_per_connection = 1000000\n"
    )
    with tempfile.TemporaryDirectory(prefix="timpy-conn-") as tmp:
        workdir = Path(tmp)
        with progress_bar() as progress:
            # Setup: the accounts, stored without an fsync each.
            proc, info = await start_node_process(workdir, False, 'sqlite_synchronous = "OFF"\n' + limits)
            try:
                host, _, port = info["tcp"].rpartition(":")
                await register_users(host, int(port), names, PASSWORD, progress)
            finally:
                await stop_node_process(proc)
            (workdir / "ready.json").unlink()
            proc, info = await start_node_process(workdir, False, limits, ws=ws)
            try:
                await trio.sleep(1.0)
                before = _rss_kib(proc.pid)
                host, _, port = info["tcp"].rpartition(":")
                ws_url = f"ws://{info['ws']}" if ws else ""
                async with trio.open_nursery() as holders:

                    async def log_in(name: str) -> Any:
                        if ws:
                            return await _ws_login(holders, ws_url, name)
                        return await _tcp_login(host, int(port), name)

                    started = time.perf_counter()
                    node_cpu0, self_cpu0 = cpu_seconds(proc.pid), self_cpu()
                    held = await log_in_all(
                        names, log_in, concurrency, progress, f"logging in over {'WebSocket' if ws else 'TCP'}"
                    )
                    took = time.perf_counter() - started
                    node_cpu, own_cpu = cpu_seconds(proc.pid) - node_cpu0, self_cpu() - self_cpu0
                    await trio.sleep(3.0)  # idle: pushes of presence and the like settle
                    after = _rss_kib(proc.pid)
                    for conn in held:
                        await conn.aclose()
                    holders.cancel_scope.cancel()
            finally:
                await stop_node_process(proc)
    return {
        "scenario": f"{clients} logins over {'WebSocket' if ws else 'TCP'}, {concurrency} at a time",
        "storage": "sqlite (synchronous=FULL)",
        "login_seconds": round(took, 2),
        "logins_per_s": round(clients / took, 1),
        "node_cpu_ms_per_login": round(1000 * node_cpu / clients, 2),
        "bench_cpu_ms_per_login": round(1000 * own_cpu / clients, 2),
        "node_rss_before_mib": round(before / 1024, 1),
        "node_rss_after_mib": round(after / 1024, 1),
        "kib_per_idle_connection": round((after - before) / clients, 1),
        "argon2id_at_default_cost_ms": round(argon_ms, 1),
        "argon2id_default_cost": argon_cost,
        "node_argon2id_cost": "opslimit=1, memlimit=8 KiB (the bench's node)",
        "loadavg_at_start": load,
        "machine": f"{os.cpu_count()} cores; the clients run in this process, beside the node",
    }



@click.command("connections")
@click.option("--clients", default=1000, show_default=True, help="Clients to log in, each a user on its own connection.")
@click.option("--ws", is_flag=True, help="Log in over WebSocket (binary frames) instead of TCP.")
@click.option("--concurrency", default=64, show_default=True, help="Logins under way at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def connections_cmd(clients: int, ws: bool, concurrency: int, as_json: bool) -> None:
    """Logins per second, and the node's memory per idle logged-in connection."""
    show(trio.run(run_connections, clients, ws, concurrency), as_json)
