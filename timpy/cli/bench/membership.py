"""``timpy bench membership``: SWIM membership in the simulator."""

from __future__ import annotations

import click

from timpy.cli.bench.common import membership_figures, show


@click.command("membership")
@click.option("--sizes", default="10,50,200", show_default=True, help="Cluster sizes, comma-separated.")
@click.option("--loss", default=0.0, show_default=True, help="Packet loss probability.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def membership_cmd(sizes: str, loss: float, seed: int, as_json: bool) -> None:
    """Simulated convergence time and crash detection time against cluster size."""
    show(membership_figures([int(s) for s in sizes.split(",")], loss, seed), as_json)
