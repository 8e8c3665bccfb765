"""``timpy bench ring``: how evenly the hash ring spreads keys, and what moves when a member joins."""

from __future__ import annotations

import statistics

import click

from timpy.cli.bench.common import show


def ring_figures(vnodes: int, keys: int) -> dict:
    from timpy.cluster.ring import HashRing

    result: dict = {"scenario": f"hash ring, {vnodes} virtual nodes per member, {keys:,} keys"}
    sample = [i.to_bytes(8, "big") for i in range(keys)]
    for n in (3, 10, 50):
        ring = HashRing.of([f"node{i}" for i in range(n)], vnodes)
        counts = dict.fromkeys(ring.members, 0)
        owners = [ring.owner(k) for k in sample]
        for o in owners:
            counts[o] += 1
        result[f"load_rel_stddev_{n}_nodes"] = round(statistics.pstdev(counts.values()) / (keys / n), 4)
        grown = ring.with_member("node-new")
        moved = sum(o != grown.owner(k) for o, k in zip(owners, sample, strict=True))
        result[f"moved_adding_to_{n}_nodes"] = f"{moved / keys:.4f} (ideal {1 / (n + 1):.4f})"
    return result


@click.command("ring")
@click.option("--vnodes", default=128, show_default=True)
@click.option("--keys", default=100_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ring_cmd(vnodes: int, keys: int, as_json: bool) -> None:
    """Spread of keys over 3, 10 and 50 members, and what moves when one joins."""
    show(ring_figures(vnodes, keys), as_json)
