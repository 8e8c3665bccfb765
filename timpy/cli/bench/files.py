"""``timpy bench files``: upload and download throughput of attachments
through real ``timpy node`` processes on loopback (SQLite files): through one
standalone node, and across three nodes (R=3, W=2: the upload copied to two
replicas before each chunk is acknowledged; the download through another
node than the upload's)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import trio

import timpy
from timpy.cli.bench.common import show, start_node_process, stop_node_process, three_node_processes

PASSWORD = "bench-password"


async def _transfer(upload_url: str, download_url: str, size: int) -> tuple[float, float]:
    data = os.urandom(size)
    await timpy.register(upload_url, "sender", PASSWORD)
    await timpy.register(upload_url, "receiver", PASSWORD)
    async with timpy.connect(upload_url, "sender", PASSWORD, sync=False) as sender:
        started = time.perf_counter()
        att = await sender.upload(data, name="bench.bin")
        up = time.perf_counter() - started
        await sender.send_file(att, to="receiver")
    async with timpy.connect(download_url, "receiver", PASSWORD, sync=False) as receiver:
        started = time.perf_counter()
        got = await receiver.download(att.id)
        down = time.perf_counter() - started
    assert got == data
    return size / up / 1e6, size / down / 1e6


async def file_figures(size_mib: int, memory: bool) -> dict:
    size = size_mib * 1024 * 1024
    result: dict = {"scenario": f"files of {size_mib} MiB, {'memory' if memory else 'SQLite files'}, loopback"}
    with tempfile.TemporaryDirectory(prefix="timpy-bench-files-") as tmp:
        proc, info = await start_node_process(Path(tmp) / "one", memory, peer=False)
        try:
            up, down = await _transfer(f"tcp://{info['tcp']}", f"tcp://{info['tcp']}", size)
        finally:
            await stop_node_process(proc)
        result["one node: upload MB/s"] = round(up, 1)
        result["one node: download MB/s"] = round(down, 1)
        async with three_node_processes(Path(tmp), memory) as infos:
            up, down = await _transfer(f"tcp://{infos[0]['tcp']}", f"tcp://{infos[1]['tcp']}", size)
        result["three nodes (R=3, W=2): upload MB/s"] = round(up, 1)
        result["three nodes: download through another node MB/s"] = round(down, 1)
    return result


@click.command("files")
@click.option("--size", "size_mib", default=20, show_default=True, help="MiB per file.")
@click.option("--memory", is_flag=True, help="Nodes keep everything in memory (default: SQLite files).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def files_cmd(size_mib: int, memory: bool, as_json: bool) -> None:
    """Upload and download MB/s of a file, through one node and across three."""
    show(trio.run(file_figures, size_mib, memory), as_json)
