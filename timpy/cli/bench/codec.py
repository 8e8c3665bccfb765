"""``timpy bench codec``: the client frame codecs on one core."""

from __future__ import annotations

import os
import platform
import time

import click

from timpy.cli.bench.common import show


def codec_rates(iterations: int) -> dict:
    from timpy.wire import jsonmap
    from timpy.wire import protocol as wp
    from timpy.wire.guard import check_binary_struct

    frame = wp.make_frame(
        "send", rid=2, message=wp.Message(client_id="c" * 32, recipient="bob", body=b"x" * 100, ext={"a": "b"}, kind=0)
    )
    data, text = wp.encode(frame), jsonmap.encode_json(frame)

    def rate(fn, n: int = iterations) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return round(n / (time.perf_counter() - start))

    return {
        "scenario": "client frame codecs (send, 100-byte body)",
        "binary_bytes": len(data),
        "json_bytes": len(text),
        "encode_binary_per_s": rate(lambda: wp.encode(frame)),
        "guard_per_s": rate(lambda: check_binary_struct(data)),
        "decode_binary_per_s": rate(lambda: wp.decode(data)),
        "json_round_trip_per_s": rate(lambda: jsonmap.decode_json(jsonmap.encode_json(frame)), max(1, iterations // 3)),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


@click.command("codec")
@click.option("--iterations", default=30_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def codec_cmd(iterations: int, as_json: bool) -> None:
    """Client frame encode/decode rates on one core."""
    show(codec_rates(iterations), as_json)
