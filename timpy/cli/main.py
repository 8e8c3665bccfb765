"""``timpy``: run a node, chat from a terminal, benchmark, manage keys."""

from __future__ import annotations

import dataclasses
import logging
import signal
from pathlib import Path

import click
import trio

from timpy.config import NodeConfig, StorageConfig, load_config
from timpy.errors import ConfigError, TimpyError
from timpy.logs import setup_logging
from timpy.store.backends import BackendSpec

log = logging.getLogger("timpy")


def _setup_logging(verbose: bool, as_json: bool = False) -> None:
    setup_logging(verbose, as_json)


@click.group()
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
    log_json: bool,
    verbose: bool,
) -> None:
    """Run a node until SIGINT or SIGTERM.

    The first node of a cluster needs no flags; every other one joins with
    --join HOST:PORT (any member's peer address) and the same cluster key.
    """
    _setup_logging(verbose, log_json)
    try:
        config = load_config(config_file) if config_file else NodeConfig()
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    changes: dict[str, object] = {}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if memory:
        changes["memory"] = True
    if listen is not None:
        changes["listen"] = None if listen == "off" else listen
    if ws is not None:
        changes["ws"] = None if ws == "off" else ws
    if database_url is not None:
        changes["database_url"] = database_url
    if ready_file is not None:
        changes["ready_file"] = ready_file
    if cluster_key is not None:
        changes["cluster_key_file"] = cluster_key
    cluster_changes: dict[str, object] = {}
    if join:
        cluster_changes["join"] = tuple(join)
    if peer is not None:
        cluster_changes["listen"] = None if peer == "off" else peer
    if advertise is not None:
        cluster_changes["advertise"] = advertise
    try:
        if backends:
            specs = []
            for item in backends:
                name, sep, url = item.partition("=")
                if not sep:
                    raise ConfigError(f"--backend: expected NAME=URL, got {item!r}")
                specs.append(BackendSpec(name, url))
            changes["storage"] = StorageConfig(backends=tuple(specs), threads=config.storage.threads)
        if admin is not None:
            changes["admin"] = dataclasses.replace(config.admin, listen=None if admin == "off" else admin)
        if cluster_changes:
            changes["cluster"] = dataclasses.replace(config.cluster, **cluster_changes)
        config = config.replace(**changes)
        trio.run(_run_node, config)
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    except OSError as exc:
        raise click.ClickException(f"{exc}; is another node using that address or directory?") from None


async def _run_node(config: NodeConfig) -> None:
    from timpy.node import open_node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config):
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break


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


from timpy.cli.backend import backend  # noqa: E402
from timpy.cli.bench import bench  # noqa: E402
from timpy.cli.chat import chat  # noqa: E402
from timpy.cli.cluster import cluster  # noqa: E402

cli.add_command(chat)
cli.add_command(cluster)
cli.add_command(backend)
cli.add_command(bench)


def main() -> None:
    cli()
