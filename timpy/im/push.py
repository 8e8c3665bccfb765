"""Push to offline devices through Matrix push gateways (Sygnal and the like).

A device registers a pusher (gateway URL, app id, push key) over the client
protocol; pushers are a record of the user (``Records``, kind ``pushers``) at
the user's owner, sealed and replicated with the user. When a message
reaches a user's inbox, the user's owner notes it (a writer listener,
``on_commit``) for each pusher whose
device has no live terminal (``Routes``); the messages to one pusher within
``[push] coalesce`` seconds make one notification, sent only if the device is
still offline then. A gateway that fails is tried again (exponential delay,
``max_attempts``); push keys it rejects are removed from the user's pushers.
What a notification carries is ``[push] content`` (``push_rules``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter

from timpy.cluster import catalog as ops
from timpy.config import PushConfig
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import ids, kinds
from timpy.im import push_rules as rules
from timpy.im.peers import Peers
from timpy.im.ratelimit import retry_delay
from timpy.im.records import Records
from timpy.im.routes import Routes
from timpy.im.users import Identity
from timpy.wire.messages import ChatMessage

if TYPE_CHECKING:
    from timpy.im.writer import Committed

log = logging.getLogger("timpy.push")

KIND = "pushers"


class Push:
    def __init__(self, config: PushConfig, records: Records, routes: Routes, peers: Peers, indexer: BlindIndexer,
                 clock_ms: Callable[[], int], registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._records = records
        self._routes = routes
        self._peers = peers
        self._indexer = indexer
        self._now = clock_ms
        self._coalescer = rules.Coalescer(config.coalesce)
        self._pushers: dict[tuple[bytes, str, str], rules.Pusher] = {}  # pushers with a window open
        self._noted_send, self._noted_recv = trio.open_memory_channel[tuple[bytes, ChatMessage]](math.inf)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        r = registry or CollectorRegistry()
        self.notifications = Counter(
            "timpy_push_notifications", "Notifications to push gateways by outcome (sent, failed: tried again, "
            "dropped: given up, rejected: push keys the gateway rejected and that were removed)", ["outcome"],
            registry=r)
        peers.serve(ops.PUSH_PUSHERS, self._change_here)

    # --- pushers (client requests) -------------------------------------------

    async def request(self, who: Identity, device_id: bytes, op: str, app_id: str, pushkey: str, url: str,
                      data: dict[str, str]) -> list[dict[str, Any]]:
        """Register (``set``), remove or list the user's pushers; returns them all."""
        if op == "set":
            rules.check_pusher(app_id, pushkey, url, data, self.config.gateways)
        elif op == "remove":
            if not app_id or not pushkey:
                raise RequestError("removing a pusher names its app id and push key", Code.BAD_REQUEST)
        elif op != "list":
            raise RequestError(f"unknown pusher operation {op!r}: set, remove or list", Code.BAD_REQUEST)
        new = ops.Pusher(device_id, app_id, pushkey, url, dict(data), self._now())
        pushers = await self._peers.ask(ops.PUSH_PUSHERS, ops.PushersChange(who.user_id, op, new))
        return [{"app_id": p.app_id, "pushkey": p.pushkey, "url": p.url, "data": p.data,
                 "this_device": p.device == device_id} for p in pushers]

    async def _change_here(self, a: ops.PushersChange) -> list[ops.Pusher]:
        user_id, op, p = a.user_id, a.op, a.pusher
        given = rules.Pusher(p.device, p.app_id, p.pushkey, p.url, p.data, p.created_ms)

        def change(old: Any) -> Any:
            pushers = [rules.Pusher.unpack(p) for p in old or []]
            if op == "set":
                pushers = rules.with_pusher(pushers, given, self.config.max_pushers)
            elif op == "remove":
                pushers = rules.without_pusher(pushers, given.app_id, given.pushkey)
            return [p.pack() for p in pushers] or None

        if op == "list":
            value = await self._records.get(user_id, KIND, "user")
        else:
            value = await self._records.update(user_id, KIND, "user", change)
        return [ops.Pusher(*rules.Pusher.unpack(x).pack()) for x in value or []]

    # --- at the user's owner ---------------------------------------------------

    def on_commit(self, committed: Sequence[Committed]) -> None:
        """The writer listener: messages that reached inboxes of users this node
        owns are noted for the push task (no waiting here; never fails a send)."""
        if not self.config.enabled:
            return
        cached = self._records.cached
        for c in committed:
            if c.message.kind not in kinds.ACTING:
                for user_id in c.inbox:
                    known, pushers = cached(user_id, KIND)
                    if known and not pushers:
                        continue  # no pusher (what the push task would read): not a channel hop per entry
                    self._noted_send.send_nowait((user_id, c.message))

    def device_online(self, user_id: bytes, device_id: bytes) -> None:
        """A terminal of the device logged in: it has its messages, its count starts again."""
        self._coalescer.reset(user_id, device_id)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._note_loop)
                nursery.start_soon(self._send_loop)
                task_status.started()
        finally:
            self._nursery = None
            if self._client is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self._client.aclose()
                self._client = None

    async def _note_loop(self) -> None:
        async for user_id, message in self._noted_recv:
            try:
                raw = await self._records.get(user_id, KIND, "user")
            except TimpyError as exc:
                log.info("push: the pushers of a user could not be read (%s); no notification", exc.text)
                continue
            if not raw:
                continue
            if ids.user_id(self._indexer, message.sender) == user_id:
                continue  # one's own message, from another device
            live = self._routes.devices(user_id)
            for pusher in (rules.Pusher.unpack(p) for p in raw):
                if pusher.device in live:
                    continue
                key = (user_id, pusher.app_id, pusher.pushkey)
                self._pushers[key] = pusher
                if self._coalescer.note(user_id, pusher, message.conversation, message.seq, message.sender,
                                        message.body, trio.current_time()) is not None:
                    self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            due = self._coalescer.next_due()
            if due is None or due > trio.current_time():
                with trio.move_on_at(due if due is not None else math.inf):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            assert self._nursery is not None
            for key, gathered in self._coalescer.take_due(trio.current_time()):
                pusher = self._pushers.pop(key)
                user_id = key[0]
                if pusher.device in self._routes.devices(user_id):
                    continue  # it came back meanwhile and has the messages
                unread = self._coalescer.missed(user_id, pusher.device)
                body = rules.notify_request(pusher, gathered, unread, self.config.content)
                self._nursery.start_soon(self._notify, user_id, pusher, body)

    async def _notify(self, user_id: bytes, pusher: rules.Pusher, body: bytes) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient()
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                with trio.fail_after(self.config.timeout):
                    response = await self._client.post(pusher.url, content=body, timeout=self.config.timeout,
                                                       headers={"Content-Type": "application/json"})
                rejected = rules.rejected_pushkeys(response.status_code, response.content)
            except (trio.TooSlowError, httpx.HTTPError, ValueError) as exc:
                if attempt == self.config.max_attempts:
                    self.notifications.labels("dropped").inc()
                    log.info("push: gateway %s did not take a notification after %d tries (%s)", pusher.url,
                             attempt, exc)
                    return
                self.notifications.labels("failed").inc()
                await trio.sleep(retry_delay(attempt, 1.0, 60.0))
                continue
            self.notifications.labels("sent").inc()
            if rejected:
                self.notifications.labels("rejected").inc(len(rejected))
                await self._remove_rejected(user_id, pusher.url, rejected)
            return

    async def _remove_rejected(self, user_id: bytes, url: str, rejected: set[str]) -> None:
        def change(old: Any) -> Any:
            pushers = rules.without_rejected([rules.Pusher.unpack(p) for p in old or []], url, rejected)
            return [p.pack() for p in pushers] or None

        try:
            await self._records.update(user_id, KIND, "user", change)
        except TimpyError as exc:
            log.info("push: rejected push keys could not be removed now (%s)", exc.text)
            return
        log.info("push: removed %d push key(s) the gateway %s rejected", len(rejected), url)
