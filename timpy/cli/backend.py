"""``timpy backend``: look at and change the SQL backends of shared-backend mode.

Like ``timpy cluster status``, it speaks to a node's peer port with the
cluster key. ``add`` and ``remove`` start a move on that node and follow it
with a progress display; the move goes on if the command is interrupted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from timpy.cli.cluster import ask_node
from timpy.concurrency import unwrap_single_error
from timpy.config import parse_hostport
from timpy.errors import Code, TimpyError

FOLLOW_LIMIT = 24 * 3600.0  # seconds a command follows a move at most

_peer = click.option("--peer", "address", default="127.0.0.1:7072", show_default=True, help="Any member's peer address.")
_key = click.option(
    "--cluster-key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
    default=Path("timpy-data/cluster.key"), show_default=True, help="The cluster key file ($TIMPY_CLUSTER_KEY wins).",
)


def _ask(address: str, key_file: Path, method: str, *args: Any, timeout: float = 10.0) -> Any:
    try:
        parse_hostport(address, "--peer")
        with unwrap_single_error():
            return trio.run(lambda: ask_node(address, key_file, method, *args, timeout=timeout))
    except TimpyError as exc:
        text = exc.text
        if exc.code == Code.UNKNOWN_OPERATION:
            text = f"the node at {address} is not in shared-backend mode (no [storage] backends)"
        raise click.ClickException(text) from None


@click.group()
def backend() -> None:
    """The SQL backends of shared-backend mode: status, add, remove, resume."""


@backend.command()
@_peer
@_key
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(address: str, key_file: Path, as_json: bool) -> None:
    """The backend map: backends, their share of the keys, and any move in progress."""
    info = _ask(address, key_file, "backend.status")
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    _print_status(info)


def _print_status(info: dict[str, Any]) -> None:
    table = Table(title=f"backend map version {info['version']}")
    for col in ("backend", "url", "weight", "share", "up"):
        table.add_column(col)
    for b in info["backends"]:
        table.add_row(b["name"], b["url"], f"{b['weight']:g}", f"{b['share'] * 100:.1f}%", "yes" if b["up"] else "NO")
    console = Console()
    console.print(table)
    move = info["move"]
    if move:
        p = info["progress"]
        console.print(
            f"move to [{', '.join(move['target'])}] in phase {move['phase']}, driven by {move['driver']}: "
            f"{p['keys_moving']} keys moving, {p['rows_copied']} rows copied, {p['rows_deleted']} deleted"
            + (f"; stopped: {p['error']}" if p["error"] else "")
        )


def _follow(address: str, key_file: Path, first: dict[str, Any]) -> None:
    """Show the move's progress until it is done (or stops with an error)."""
    console = Console()
    labels = {"copy": "copying keys that move", "freeze": "final copy and verify", "cleanup": "deleting old copies"}
    info = first
    deadline = time.monotonic() + FOLLOW_LIMIT
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} keys"),
        TextColumn("{task.fields[rows]}"), TimeElapsedColumn(), console=console,
    ) as progress:
        task = progress.add_task("starting", total=None, rows="")
        while time.monotonic() < deadline:
            p = info["progress"]
            phase = info["move"]["phase"] if info["move"] else "done"
            progress.update(
                task,
                description=labels.get(phase, phase),
                total=p["keys_total"] or None,
                completed=min(p["keys_scanned"], p["keys_total"] or p["keys_scanned"]),
                rows=f"{p['rows_copied']} rows copied, {p['rows_deleted']} deleted",
            )
            if p["error"] and not info["driving"]:
                raise click.ClickException(f"the move stopped: {p['error']}")
            if info["move"] is None:
                break
            time.sleep(0.3)
            info = _ask(address, key_file, "backend.status")
    p = info["progress"]
    console.print(
        f"done: map version {info['version']}; {p['keys_moving']} keys moved, {p['rows_copied']} rows copied, "
        f"{p['rows_deleted']} old rows deleted in {p['elapsed_s']:.1f} s"
    )
    _print_status(info)


@backend.command()
@click.argument("name")
@click.argument("url")
@click.option("--weight", type=float, default=1.0, show_default=True, help="Share of the keys, relative to the others.")
@click.option("--no-wait", is_flag=True, help="Start the move and return at once.")
@_peer
@_key
def add(name: str, url: str, weight: float, no_wait: bool, address: str, key_file: Path) -> None:
    """Add backend NAME at URL (an empty database) and move its share of the keys to it, online."""
    info = _ask(address, key_file, "backend.add", name, url, weight, timeout=120.0)
    if not no_wait:
        _follow(address, key_file, info)


@backend.command()
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Start the move and return at once.")
@_peer
@_key
def remove(name: str, no_wait: bool, address: str, key_file: Path) -> None:
    """Move every key off backend NAME, online, then drop it from the map."""
    info = _ask(address, key_file, "backend.remove", name, timeout=120.0)
    if not no_wait:
        _follow(address, key_file, info)


@backend.command()
@_peer
@_key
def resume(address: str, key_file: Path) -> None:
    """Resume a move that stopped (its driver crashed, or a backend was down), driven by this node."""
    info = _ask(address, key_file, "backend.resume", timeout=60.0)
    _follow(address, key_file, info)
