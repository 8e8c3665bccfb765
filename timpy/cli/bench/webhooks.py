"""``timpy bench webhooks``: webhook events delivered per second, and what a
check before each message is stored adds to a send.

A ``timpy node`` process (SQLite) and, in this process, a receiver (hypercorn
+ starlette on 127.0.0.1) that checks every signature. Delivery: ``--senders``
clients send ``--messages`` messages at once; the clock runs from the first
send until the receiver has every ``message.stored`` event. Latency: sequential sends from one client, p50/p99 to the ack, on a
node without a check and on one whose ``message.before_send`` endpoint (the
same receiver) answers "allow".
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import trio

import timpy
from timpy.cli.bench.common import percentile, show, start_node_process, stop_node_process

PASSWORD = "bench-password"
SECRET = "bench-webhook-secret"


class Receiver:
    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        from timpy.im import webhook_rules

        self.ids: set[str] = set()
        self.bad = 0
        self.port = 0
        self._scope: trio.CancelScope | None = None

        async def event(request: Request) -> Response:
            body = await request.body()
            if not webhook_rules.verify(SECRET, request.headers.get(webhook_rules.TIMESTAMP_HEADER, ""), body,
                                        request.headers.get(webhook_rules.SIGNATURE_HEADER, ""), time.time()):
                self.bad += 1
                return Response(status_code=401)
            if request.headers.get(webhook_rules.EVENT_HEADER) == "message.stored":
                self.ids.add(request.headers[webhook_rules.EVENT_ID_HEADER])
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/events", event, methods=["POST"]), Route("/check", event, methods=["POST"])])

    async def start(self, nursery: trio.Nursery) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = config.errorlog = None
        scope = self._scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await serve(self.app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)

        binds = await nursery.start(run)
        self.port = int(str(binds[0]).rsplit(":", 1)[-1])

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


def _endpoint(name: str, port: int, path: str, events: str) -> str:
    return (f'[[webhooks.endpoints]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}{path}"\n'
            f'secret = "{SECRET}"\nevents = [{events}]\n')


async def _send_times(url: str, count: int) -> list[float]:
    await timpy.register(url, "alice", PASSWORD)
    await timpy.register(url, "bob", PASSWORD)
    times = []
    async with timpy.connect(url, "alice", PASSWORD) as alice:
        for i in range(20):
            await alice.send("bob", f"warm-up {i}")
        for i in range(count):
            started = time.perf_counter()
            await alice.send("bob", f"message {i}")
            times.append(time.perf_counter() - started)
    return times


async def _send_burst(url: str, senders: int, messages: int) -> float:
    """Seconds for ``senders`` clients to send ``messages`` 1:1 messages between them, at once."""
    names = [f"s{i}" for i in range(senders)]
    for name in [*names, "sink"]:
        await timpy.register(url, name, PASSWORD)

    async def send_some(name: str, n: int) -> None:
        async with timpy.connect(url, name, PASSWORD) as c:
            for i in range(n):
                await c.send("sink", f"{name} {i}")

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k, name in enumerate(names):
            nursery.start_soon(send_some, name, messages // senders + (k < messages % senders))
    return time.perf_counter() - started


async def webhooks_bench(messages: int, latency_sends: int, senders: int) -> dict:
    receiver = Receiver()
    result: dict[str, Any] = {"scenario": "webhooks on one node", "storage": "sqlite (synchronous=FULL)",
                              "messages": messages}
    async with trio.open_nursery() as nursery:
        await receiver.start(nursery)
        with tempfile.TemporaryDirectory(prefix="timpy-bench-") as tmp:
            for label, extra in [("without_webhooks", ""),
                                 ("with_webhooks", "[webhooks]\n" + _endpoint("bench", receiver.port, "/events",
                                                                               '"message.stored"'))]:
                proc, info = await start_node_process(Path(tmp) / label, False, extra)
                try:
                    receiver.ids.clear()
                    elapsed = await _send_burst(f"tcp://{info['tcp']}", senders, messages)
                    result[f"sends_per_s_{label}"] = round(messages / elapsed)
                    if label == "with_webhooks":
                        started = time.perf_counter() - elapsed
                        with trio.fail_after(600):
                            while len(receiver.ids) < messages:
                                await trio.sleep(0.01)
                        result["events_per_s_delivered"] = round(messages / (time.perf_counter() - started))
                        result["bad_signatures"] = receiver.bad
                finally:
                    await stop_node_process(proc)

            lat: dict[str, list[float]] = {}
            for label, extra in [("without_check", ""),
                                 ("with_check", _endpoint("check", receiver.port, "/check", '"message.before_send"'))]:
                proc, info = await start_node_process(Path(tmp) / label, False, extra)
                try:
                    lat[label] = await _send_times(f"tcp://{info['tcp']}", latency_sends)
                finally:
                    await stop_node_process(proc)
        nursery.cancel_scope.cancel()
    for label, times in lat.items():
        result[f"send_p50_ms_{label}"] = round(percentile(times, 50) * 1000, 2)
        result[f"send_p99_ms_{label}"] = round(percentile(times, 99) * 1000, 2)
    result["check_adds_p50_ms"] = round(result["send_p50_ms_with_check"] - result["send_p50_ms_without_check"], 2)
    result["machine"] = f"{os.cpu_count()} cores; receiver, clients and node on this machine"
    return result


@click.command("webhooks")
@click.option("--messages", default=5000, show_default=True, help="Messages whose events are delivered.")
@click.option("--senders", default=8, show_default=True, help="Clients sending them at once.")
@click.option("--latency-sends", default=500, show_default=True, help="Sequential sends timed per node.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def webhooks_cmd(messages: int, senders: int, latency_sends: int, as_json: bool) -> None:
    """Webhook events delivered per second; latency a check before storing adds to a send."""
    show(trio.run(webhooks_bench, messages, latency_sends, senders), as_json)
