"""``timpy cluster status``: ask any node how it sees the cluster.

The command speaks to the node's peer port like a node would, through the
same handshake: only a holder of the cluster key gets an answer. It takes a
throwaway identity and never becomes a member.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import nacl.signing
import trio
from rich.console import Console
from rich.table import Table

from timpy.cluster import catalog, codec
from timpy.cluster.rpc import Rpc, is_rpc
from timpy.cluster.transport import TcpPeerTransport
from timpy.concurrency import unwrap_single_error
from timpy.config import parse_hostport
from timpy.crypto.keys import load_or_create_cluster_key
from timpy.errors import TimpyError


async def ask_node(
    address: str, key_file: Path, method: str = "cluster.status", *args: Any, timeout: float = 5.0
) -> Any:
    """Ask the node at ``address`` for the catalog operation named ``method``
    with its arguments in field order; returns its result."""
    op = catalog.BY_NAME.get(method)
    if op is None or not op.reply:
        raise TimpyError(f"no such request to a node: {method}")
    request = op.args(*args)
    keys, _ = load_or_create_cluster_key(key_file, create=False)
    transport = TcpPeerTransport(keys, nacl.signing.SigningKey.generate(), listen="127.0.0.1:0")
    rpc = Rpc(transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)

        async def receive() -> None:
            async for payload in transport.incoming:
                try:
                    raw = codec.unpack(payload)
                except codec.CodecError:
                    continue
                if is_rpc(raw):
                    rpc.receive(raw)

        nursery.start_soon(receive)
        call = rpc.start_call(address, op, request)
        answer: list[Any] = []
        failure: list[TimpyError] = []
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as waiting:

                async def wait_answer() -> None:
                    try:
                        answer.append(await call.result(timeout + 1))
                    except TimpyError as exc:  # the node's answer was an error
                        failure.append(exc)
                    waiting.cancel_scope.cancel()

                async def watch_refusal() -> None:
                    while not transport.stats.refused:
                        await trio.sleep(0.05)
                    waiting.cancel_scope.cancel()

                waiting.start_soon(wait_answer)
                waiting.start_soon(watch_refusal)
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if answer:
        return answer[0]
    if transport.stats.refused:
        raise TimpyError(
            f"the node at {address} refused the handshake: this cluster key ({keys.fingerprint}) is not its key"
        )
    raise TimpyError(
        f"no answer from a timpy node at {address} within {timeout:g} s; "
        "check the address (the node's peer port, 7072 by default) and that it runs"
    )


@click.group()
def cluster() -> None:
    """Look at a running cluster."""


@cluster.command()
@click.option("--peer", "address", default="127.0.0.1:7072", show_default=True, help="Any member's peer address.")
@click.option("--cluster-key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("timpy-data/cluster.key"), show_default=True, help="The cluster key file ($TIMPY_CLUSTER_KEY wins).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(address: str, key_file: Path, as_json: bool) -> None:
    """Members as a node sees them: state, address, incarnation, ring share, and the
    path its channel to each takes (direct TCP, ICE with candidate types, or relayed via whom)."""
    try:
        parse_hostport(address, "--peer")
        with unwrap_single_error():
            info = trio.run(ask_node, address, key_file)
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    table = Table(title=f"cluster seen by {info['node']} (ring version {info['ring_version']})")
    for col in ("node", "address", "state", "incarnation", "ring share", "path"):
        table.add_column(col)
    for m in info["members"]:
        this = m["name"] == info["node"]
        name = str(m["name"]) + (" (this)" if this else "")
        path = "-" if this else (m.get("path") or {}).get("text", "no channel now")
        table.add_row(name, str(m["address"]), str(m["state"]), str(m["incarnation"]), f"{m['share'] * 100:.1f}%", path)
    # piped output keeps whole node ids and paths rather than wrapping at 80 columns
    console = Console()
    if not sys.stdout.isatty():
        console = Console(width=max(console.width, 160))
    console.print(table)
    repair = info["repair"]
    console.print(
        f"replicas R={info['replicas']}, write quorum W={info['write_quorum']}; "
        f"live terminals {info['terminals']}, routing records {info['routes']}; "
        f"repair: {repair['passes']} passes{' (running)' if repair['running'] else ''}, "
        f"last {repair['keys_checked']} keys checked, {repair['keys_repaired']} differed; since start "
        f"{repair.get('ranges_compared', 0)} ranges compared, {repair.get('rows_repaired', 0)} rows repaired, "
        f"{repair.get('conflicting_slots', 0)} conflicting slots"
    )
    own = info.get("ownership") or {}
    if "epoch" in own:
        console.print(
            f"ring epoch {own['epoch']}: {len(own['voters'])} voting members, {len(own['ring_members'])} on the ring; "
            + (f"lease held ({own['lease_left_s']:.1f} s left)" if own["lease"] else
               f"NO LEASE: this node reaches {own['reached']} of {len(own['voters'])} voters, "
               f"writes need {len(own['voters']) // 2 + 1}")
        )
        if own.get("ring_change_held"):
            console.print(
                f"RING CHANGE WAITING: {own['earlier_rings']} earlier rings may still hold data that no repair pass "
                "has copied to the current ring; the ring changes once every member finishes a repair pass. "
                "If a member is gone for good, `timpy cluster forget` it."
            )


@cluster.command()
@click.argument("node_id")
@click.option("--peer", "address", default="127.0.0.1:7072", show_default=True, help="Any live member's peer address.")
@click.option("--cluster-key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("timpy-data/cluster.key"), show_default=True, help="The cluster key file ($TIMPY_CLUSTER_KEY wins).")
def forget(node_id: str, address: str, key_file: Path) -> None:
    """Remove NODE_ID, a member that is gone for good, from the voting members.

    A member declared dead keeps its vote (so a partition cannot outvote it);
    forget it when it will not come back with its data. Refused while the node
    is alive. The change takes effect with the next ring epoch."""
    try:
        parse_hostport(address, "--peer")
        with unwrap_single_error():
            info = trio.run(ask_node, address, key_file, "cluster.forget", node_id)
    except TimpyError as exc:
        raise click.ClickException(exc.text) from None
    click.echo(
        f"{node_id} will leave the voting members with the next ring epoch "
        f"(now epoch {info['epoch']}, {len(info['voters'])} voters)"
    )
