"""Webhooks and push with a real ``timpy node`` process: the events of
acknowledged messages survive a SIGKILL in the outbox and reach a receiver
that was down, once each; an offline device is woken through a real Matrix
push gateway."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import trio

import timpy
from tests.conftest import PASSWORD, NodeProcess
from tests.support.http_receivers import BusinessServer, PushGateway

SECRET = "e2e-shared-secret-0123456789"


async def test_acknowledged_events_survive_a_kill_and_an_offline_phone_is_woken(tmp_path: Path) -> None:
    biz, gateway = BusinessServer(SECRET), PushGateway()
    async with trio.open_nursery() as bg:
        await biz.server.start(bg)
        await gateway.server.start(bg)
        biz.server.stop()  # the business server is down until after the crash
        node = NodeProcess(tmp_path, top_toml=(
            "[push]\ncoalesce = 0.2\n"
            "[webhooks]\nbackoff_base = 0.1\nbackoff_max = 0.5\nmax_attempts = 1000\n"
            f'[[webhooks.endpoints]]\nname = "biz"\nurl = "{biz.server.url("/events")}"\nsecret = "{SECRET}"\n'
            'events = ["message.stored", "user.registered"]\n'
        ))
        await trio.to_thread.run_sync(node.start)
        try:
            await timpy.register(node.tcp_url, "alice", PASSWORD)
            await timpy.register(node.tcp_url, "bob", PASSWORD)
            async with timpy.connect(node.tcp_url, "bob", PASSWORD, device="phone") as phone:
                await phone.set_pusher("org.example.chat", "phone-key", gateway.url)
            async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
                acks = [await alice.send("bob", f"before the crash {i}") for i in range(5)]
            await trio.to_thread.run_sync(node.stop, signal.SIGKILL)

            await biz.server.start(bg)  # up again, on the same port
            await trio.to_thread.run_sync(node.start)
            await biz.wait_for(lambda: len(biz.ids("message.stored")) == 5 and len(biz.ids("user.registered")) == 2,
                               timeout=30)
            async with timpy.connect(node.tcp_url, "alice", PASSWORD) as alice:
                after = await alice.send("bob", "after the crash")
            with trio.fail_after(20):
                while not any(n["event_id"] == f"{after.conversation}:{after.seq}" for n in gateway.notifications):
                    await trio.sleep(0.05)
            await biz.wait_for(lambda: len(biz.ids("message.stored")) == 6)
            await trio.sleep(0.5)
        finally:
            if node.proc is not None and node.proc.poll() is None:
                await trio.to_thread.run_sync(node.stop)
        bg.cancel_scope.cancel()
    assert [i for i, n in Counter(biz.ids()).items() if n > 1] == []
    bodies = sorted(e["data"]["body"] for e in biz.events if e["type"] == "message.stored")
    assert bodies == ["after the crash", *(f"before the crash {i}" for i in range(5))]
    assert {(e["data"]["conversation"], e["data"]["seq"]) for e in biz.events if e["type"] == "message.stored"} == {
        (a.conversation, a.seq) for a in [*acks, after]}
    woken = [n for n in gateway.notifications if n["event_id"] == f"{after.conversation}:{after.seq}"]
    assert [d["pushkey"] for d in woken[0]["devices"]] == ["phone-key"] and "content" not in woken[0]
