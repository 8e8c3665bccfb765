"""``timpy``: run a node, chat from a terminal, benchmark, manage keys."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import click
import trio

from timpy.cli.lazy import LazyGroup
from timpy.concurrency import unwrap_single_error
from timpy.config import CLI_DEFAULTS, NodeConfig, parse_text_value, resolve_config
from timpy.errors import ConfigError, TimpyError
from timpy.logs import setup_logging

log = logging.getLogger("timpy")


def _setup_logging(verbose: bool, as_json: bool = False) -> None:
    setup_logging(verbose, as_json)


# The command groups other than node and keys, imported when named (timpy.cli.lazy).
COMMAND_GROUPS = {
    "chat": "timpy.cli.chat:chat",
    "cluster": "timpy.cli.cluster:cluster",
    "backend": "timpy.cli.backend:backend",
    "bench": "timpy.cli.bench:bench",
}


@click.group(cls=LazyGroup, lazy=COMMAND_GROUPS)
@click.version_option(package_name="timpy")
def cli() -> None:
    """timpy: a decentralized peer-to-peer instant-messaging engine."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML configuration file.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), help="Data directory (default ./timpy-data).")
@click.option("--memory", is_flag=True, default=None, help="Keep everything in memory: no database file.")
@click.option("--listen", help="TCP client listener HOST:PORT (default 127.0.0.1:7070); 'off' disables it.")
@click.option("--ws", help="WebSocket listener HOST:PORT (default 127.0.0.1:7071); 'off' disables it.")
@click.option("--database-url", help="SQLAlchemy URL of a database to use instead of the embedded SQLite file.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), help="Write bound addresses here as JSON once listening.")
@click.option("--join", "join", multiple=True, metavar="HOST:PORT", help="Join the cluster through this member's peer address (repeatable).")
@click.option("--peer", help="Peer listener HOST:PORT for other nodes (default 127.0.0.1:7072); 'off' runs standalone.")
@click.option("--advertise", metavar="HOST:PORT", help="The peer address other nodes should dial, if not --peer.")
@click.option("--cluster-key", "cluster_key", type=click.Path(dir_okay=False, path_type=Path), help="Cluster key file (default DATA/cluster.key).")
@click.option("--backend", "backends", multiple=True, metavar="NAME=URL",
              help="Shared-backend mode: a SQL backend every node shares (repeatable; seeds the backend map).")
@click.option("--admin", metavar="HOST:PORT", help="Admin HTTP listener (default 127.0.0.1:7073); 'off' disables it.")
@click.option("--shutdown-timeout", type=str, metavar="SECONDS",
              help="Seconds a first SIGINT/SIGTERM may take to drain (default 10); a second signal stops at once.")
@click.option("--set", "settings", multiple=True, metavar="[SECTION.]KEY=VALUE",
              help="Any option of the configuration file, e.g. --set limits.max_body=65536 (repeatable).")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line (with the node id).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def node(
    config_file: Path | None,
    data_dir: Path | None,
    memory: bool | None,
    listen: str | None,
    ws: str | None,
    database_url: str | None,
    ready_file: Path | None,
    join: tuple[str, ...],
    peer: str | None,
    advertise: str | None,
    cluster_key: Path | None,
    backends: tuple[str, ...],
    admin: str | None,
    shutdown_timeout: str | None,
    settings: tuple[str, ...],
    log_json: bool,
    verbose: bool,
) -> None:
    """Run a node until SIGINT or SIGTERM.

    The first node of a cluster needs no flags; every other one joins with
    --join HOST:PORT (any member's peer address) and the same cluster key.
    Options come from the flags, then $TIMPY_* variables, then the --config
    file, then the defaults (docs/quickstart.md lists them all).

    A first SIGINT/SIGTERM drains (acknowledged writes stored, the cluster
    left gracefully) for at most shutdown_timeout seconds; a second signal,
    or the time passing, exits at once with status 1.
    """
    _setup_logging(verbose, log_json)
    try:
        flags = _node_flags(settings, {
            ("", "data_dir"): data_dir, ("", "memory"): memory or None, ("", "listen"): listen, ("", "ws"): ws,
            ("", "database_url"): database_url, ("", "ready_file"): ready_file, ("", "cluster_key_file"): cluster_key,
            ("", "shutdown_timeout"): shutdown_timeout, ("cluster", "join"): tuple(join) or None,
            ("cluster", "listen"): peer, ("cluster", "advertise"): advertise, ("admin", "listen"): admin,
            ("storage", "backends"): _backend_flags(backends) or None,
        })
        config = resolve_config(config_file, environ=os.environ, flags=flags, defaults=CLI_DEFAULTS, warn=log.warning)
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    _raise_open_files(config.limits.max_connections + 1024)
    try:
        trio.run(_run_node, config)
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    except OSError as exc:
        raise click.ClickException(f"{exc}; is another node using that address or directory?") from None


def _raise_open_files(need: int) -> None:
    """One descriptor per client connection, and some for the rest: raise the
    soft limit toward ``need`` (never past the hard limit, which only the
    operator can raise: ``ulimit -Hn``, or LimitNOFILE= in a systemd unit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, exc)
    if want < need:
        log.warning("open files are limited to %d (hard limit); limits.max_connections is %d", hard, need - 1024)


def _backend_flags(items: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    backends = []
    for item in items:
        name, sep, url = item.partition("=")
        if not sep:
            raise ConfigError(f"--backend: expected NAME=URL, got {item!r}")
        backends.append({"name": name, "url": url})
    return tuple(backends)


def _node_flags(settings: tuple[str, ...], named: dict[tuple[str, str], object]) -> dict[str, object]:
    """The flags as a nested dict shaped like the file; named flags win over --set."""
    flags: dict[str, object] = {}
    for item in settings:
        key, sep, text = item.partition("=")
        section, _, name = key.strip().rpartition(".")
        if not sep or not name:
            raise ConfigError(f"--set: expected [SECTION.]KEY=VALUE, e.g. limits.max_body=65536, got {item!r}")
        _put(flags, section, name, parse_text_value(section, name, text, f"--set {key}"))
    for (section, name), value in named.items():
        if value is not None:
            _put(flags, section, name, value)
    return flags


def _put(flags: dict[str, object], section: str, name: str, value: object) -> None:
    """``flags[section][name] = value`` (top level when ``section`` is empty)."""
    if not section:
        flags[name] = value
        return
    table = flags.setdefault(section, {})
    if isinstance(table, dict):
        table[name] = value


GC_YOUNG_THRESHOLD = 100_000  # allocations between young collections (Python's default: 700)
GC_MIDDLE_THRESHOLD = 100  # young collections between middle ones (Python's default: 10)


def _tune_gc() -> None:
    """The node process's garbage collector, once the node has started.

    What the start made (modules, the node's parts) lives as long as the
    process: frozen, no collection walks it again. A connection's login makes
    a few hundred container objects that mostly die with their requests;
    at Python's default a young collection ran every 700 allocations and
    moved connections' objects toward the old generation, whose collections
    walk every live connection: 3.5 s of a node's 14 s of CPU logging in
    10,000 clients (``timpy bench connections``). Under a flood the objects
    of messages on their way (each queued append, its frames, its delivery)
    live for seconds: at 20,000 allocations a young collection walked them
    63 times and the middle generation's 5 times, 1.05 s of the node's
    11.7 s of CPU during one ``timpy bench flood``; every 100,000, 8 young
    collections and no middle one, 0.28 s (docs/performance.md, "The
    garbage collector under the flood"). A middle collection walks every
    object that outlived a young one since the last: in a flood of 80,000
    messages one ran and took 0.30–0.32 s (a pause of that length) and
    found nothing to free; every 100 young collections (10 million
    allocations) none runs in such a flood. Only ``timpy node`` does this: a
    program that embeds a node owns its own process."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), max(middle, GC_MIDDLE_THRESHOLD), old)


async def _run_node(config: NodeConfig) -> None:
    """Run until a signal; drain within config.shutdown_timeout, or exit at once (status 1)."""
    from timpy.node import open_node

    bound = config.shutdown_timeout
    stop = trio.Event()
    node_ref: list[object] = []
    backstops: list[threading.Timer] = []

    def cut_short(why: str) -> NoReturn:
        phase = getattr(node_ref[0], "shutdown_phase", "starting") if node_ref else "starting"
        leave = ", and peers notice this node gone by failure detection, not a graceful leave" if config.cluster.listen else ""
        log.error("shutdown cut short (%s) while %s: acknowledged messages are stored; what was in flight is not%s",
                  why, phase, leave)
        logging.shutdown()
        os._exit(1)

    async def watch(signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                cut_short(f"a second {name}")
            log.info("received %s: shutting down within %s s (a second signal stops at once)", name, f"{bound:g}")
            stop.set()
            # A backstop the event loop cannot block: exits even if a call hangs the loop itself.
            backstop = threading.Timer(bound + 2.0, cut_short, args=(f"shutdown_timeout {bound:g} s passed",))
            backstop.daemon = True
            backstop.start()
            backstops.append(backstop)

    async def bound_after_stop() -> None:
        await stop.wait()
        await trio.sleep(bound)
        cut_short(f"shutdown_timeout {bound:g} s passed")

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, unwrap_single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, signals)
                nursery.start_soon(bound_after_stop)
                async with open_node(config) as node:
                    node_ref.append(node)
                    _tune_gc()
                    await stop.wait()
                nursery.cancel_scope.cancel()
    finally:
        for backstop in backstops:
            backstop.cancel()  # the drain ended in time


@cli.group()
def keys() -> None:
    """Cluster key management."""


@keys.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def keys_new(path: Path) -> None:
    """Write a new cluster key to PATH (mode 0600)."""
    from timpy.crypto.keys import ClusterKeys, encode_key, write_secret_file

    if path.exists():
        raise click.ClickException(f"{path} exists; refusing to overwrite a key")
    k = ClusterKeys.generate()
    write_secret_file(path, encode_key(k.root))
    click.echo(f"wrote cluster key {k.fingerprint} to {path}")




def main() -> None:
    cli()
