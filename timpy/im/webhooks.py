"""Webhooks to business servers: a check before a message is stored, and
events after (message stored, group changed, user registered, login,
logout), delivered at least once from a durable outbox.

The check (``message.before_send``) is a send check of the writer
(``Writer.check_sends``): it runs where the send is served, in that
request's task, before the message is queued (a slow endpoint must not
stall the writer's batches for other senders): each such endpoint answers allow, deny (with the
reason the sender sees) or rewrite (a new body), within its timeout; one
that fails is passed over (``fail_open``) or refuses the message.

Events are written to the outbox (``timpy.store.outbox``) by the node that
owns them, and copied to the replicas of the key that owns them (the
conversation, or the user: ``EventSink.emit``'s ``owner``) with the write
quorum of messages, before they count as emitted. Only the key's current
owner delivers them; after a ring change (an owner stopped for good, say)
the next owner delivers what is pending, under the same event id. A message's event is handed off by a
writer listener (``on_commit``: no waiting in the writer task) to the
recorder task, which writes each commit's events in one outbox transaction;
the writer's ack hold (``hold``) waits for that before the sender is
acknowledged, so an acknowledged message always has its event (a send
retried after a failure is a duplicate: the hold emits it again under the
same id, stored once).
One delivery loop per endpoint posts due events, signed
(``webhook_rules``), ``concurrency`` at a time; a failure is tried again
after an exponential, bounded, jittered delay, and after ``max_attempts``
becomes a dead letter the admin API lists, retries or drops. Each change of
an event's state is copied to the key's replicas (best effort: one that
misses it gets it from repair; meanwhile a new owner may send the event
again, which at least once allows and the event id lets receivers drop).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from timpy.config import WebhookEndpoint, WebhooksConfig
from timpy.errors import Code, RequestError, TimpyError
from timpy.im import webhook_rules as rules
from timpy.im.ids import parse_conversation
from timpy.store.outbox import (
    DEAD,
    PENDING,
    EventRef,
    NewEvent,
    Outbox,
    OutboxRow,
    Outcome,
    Owns,
    ShardedOutbox,
)
from timpy.store.repository import Store
from timpy.store.rows import Copies
from timpy.wire.messages import ChatMessage, MessageContent, SendResult

if TYPE_CHECKING:
    from timpy.im.writer import Committed

log = logging.getLogger("timpy.webhooks")

BEFORE_SEND = "message.before_send"
BATCH = 256
IDLE_CHECK = 5.0  # seconds between looks at the outbox when nothing woke the loop
GATHER = 0.01  # seconds a woken loop lets more events arrive before it reads the outbox
PURGE_EVERY = 60.0
RECORD_QUEUE = 4096  # commits whose events wait for the recorder; more fail their acks (the retry emits them)
UNRECORDED_KEPT = 100_000  # ids of events whose recording failed, until their sender's hold writes them
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: An event to emit: type, id, data, and the key that owns it (kind, key).
Item = tuple[str, str, dict[str, Any], tuple[str, bytes]]
#: Copies rows to a key's replicas, returning once the write quorum has them (``Replicator.to_replicas``).
ToReplicas = Callable[[bytes, Callable[[], Awaitable[Copies]]], Awaitable[None]]


@dataclass(eq=False)
class _Recording:
    """The ``message.stored`` events of one commit, on their way to the outbox."""

    items: list[Item]
    done: trio.Event = field(default_factory=trio.Event)


class Webhooks:
    def __init__(
        self,
        config: WebhooksConfig,
        store: Store,
        outbox: Outbox | ShardedOutbox,
        node_id: str,
        clock_ms: Callable[[], int],
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        owns: Owns | None = None,
        to_replicas: ToReplicas | None = None,
    ) -> None:
        """``owns``: whether this node delivers a key's events now (None: every
        event here is this node's); ``to_replicas``: copies a key's outbox
        rows to its replicas (None: no node copies, as with shared backends)."""
        self.config = config
        self._owns = owns
        self._to_replicas = to_replicas
        self._store = store
        self._outbox = outbox
        self._node_id = node_id
        self._now = clock_ms
        self._rng = rng or random.Random()
        self._endpoints = {e.name: e for e in config.endpoints}
        self._checks = [e for e in config.endpoints if BEFORE_SEND in e.events]
        self._wake = {name: trio.Event() for name in self._endpoints}
        self._stored_wanted = self.wants("message.stored")
        # Commits' events on their way to the outbox, by event id (until written or failed).
        self._recording: dict[str, _Recording] = {}
        self._unrecorded: OrderedDict[str, None] = OrderedDict()  # their recording failed: the hold writes them
        self._record_send, self._record_recv = trio.open_memory_channel[_Recording](RECORD_QUEUE)
        self._client: httpx.AsyncClient | None = None
        r = registry or CollectorRegistry()
        self.deliveries = Counter("timpy_webhook_deliveries", "Webhook event deliveries by endpoint and outcome "
                                  "(delivered, failed: tried again later, dead: a dead letter)",
                                  ["endpoint", "outcome"], registry=r)
        self.latency = Histogram("timpy_webhook_seconds", "Webhook requests: from sending to the endpoint's answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.checks = Counter("timpy_webhook_checks", "Checks before a message is stored, by endpoint and answer "
                              "(allow, deny, rewrite, failed)", ["endpoint", "verdict"], registry=r)
        self.emitted = Counter("timpy_webhook_events", "Events emitted for each endpoint (one emitted again, as a retried send's, counts again; it is stored once)",
                               ["endpoint"], registry=r)

    # --- emitting ----------------------------------------------------------

    def wants(self, event_type: str) -> bool:
        return any(event_type in e.events for e in self.config.endpoints)

    def _events(self, item: Item, now_ms: int) -> list[NewEvent]:
        event_type, event_id, data, (kind, key) = item
        body = rules.envelope(event_type, event_id, now_ms, self._node_id, data)
        return [NewEvent(e.name, event_id, event_type, body, kind, key)
                for e in self.config.endpoints if event_type in e.events]

    async def emit(self, event_type: str, event_id: str, data: dict[str, Any], owner: tuple[str, bytes]) -> None:
        await self.emit_many([(event_type, event_id, data, owner)])

    async def emit_many(self, items: list[Item]) -> None:
        """Write the events to the outbox and copy them to their keys'
        replicas; returns once the write quorum holds them (raises when it
        does not: they stay here, repair copies them, and emitting them
        again, as a retried send does, stores them once)."""
        now = self._now()
        events = [e for item in items for e in self._events(item, now)]
        if not events:
            return
        await self._store.run(self._outbox.add, events, now)
        for name in {e.endpoint for e in events}:
            self.emitted.labels(name).inc(sum(1 for e in events if e.endpoint == name))
        await self._copy_out([(e.endpoint, e.event_id) for e in events], must=True)
        for name in {e.endpoint for e in events}:
            self._wake[name].set()

    async def _copy_out(self, events: Iterable[EventRef], must: bool) -> None:
        """Copy these events' rows, as they are now, to their keys' replicas,
        one key at a time in parallel; ``must``: raise when a key's write
        quorum is missed (else it is logged: repair copies them later)."""
        if self._to_replicas is None:
            return
        by_key = await self._store.run(self._outbox.copies, list(events))
        if not by_key:
            return
        missed: list[str] = []
        to_replicas = self._to_replicas

        async def one(key: bytes, rows: list[Any]) -> None:
            async def fetch() -> Copies:
                return Copies(outbox=rows)
            try:
                await to_replicas(key, fetch)
            except TimpyError as exc:
                missed.append(exc.text)

        async with trio.open_nursery() as nursery:
            for (_, key), rows in by_key.items():
                nursery.start_soon(one, key, rows)
        if missed:
            if must:
                raise TimpyError(f"the events could not be copied to enough nodes ({missed[0]}); retry",
                                 Code.UNAVAILABLE)
            log.debug("webhooks: a change of %d events' state reached too few replicas (%s); repair copies it",
                      len(missed), missed[0])

    def ring_changed(self) -> None:
        """Keys changed owners: each loop looks for the events it now delivers."""
        for event in self._wake.values():
            event.set()

    # --- the hooks of the message writer -----------------------------------

    async def check_send(self, content: MessageContent, conversation: str) -> bytes:
        """The writer's send check: ask each ``message.before_send`` endpoint;
        returns the body to store (raises when one denies)."""
        body = content.body
        for endpoint in self._checks:
            data = {"sender": content.sender, "recipient": content.recipient, "conversation": conversation,
                    "client_id": content.client_id, "kind": content.kind, "ext": dict(content.ext),
                    **rules.body_fields(body)}
            verdict = await self._check(endpoint, data)
            if verdict.action == "deny":
                raise RequestError(verdict.reason, Code.NOT_ALLOWED)
            if verdict.action == "rewrite" and verdict.body is not None:
                body = verdict.body
        return body

    async def _check(self, endpoint: WebhookEndpoint, data: dict[str, Any]) -> rules.Verdict:
        now = self._now()
        event = rules.event_id(BEFORE_SEND, data["sender"], data["client_id"], now)
        body = rules.envelope(BEFORE_SEND, event, now, self._node_id, data)
        started = time.perf_counter()
        try:
            with trio.fail_after(endpoint.timeout):
                response = await self._http().post(
                    endpoint.url, content=body, headers=rules.headers(endpoint.secret, BEFORE_SEND, event, now // 1000, body),
                    timeout=endpoint.timeout,
                )
            verdict = rules.parse_verdict(response.status_code, response.content)
        except (trio.TooSlowError, httpx.HTTPError, ValueError) as exc:
            self.checks.labels(endpoint.name, "failed").inc()
            log.warning("webhook %s: the check before a message is stored failed (%s)%s", endpoint.name,
                        _reason(exc), "; stored anyway (fail_open)" if endpoint.fail_open else "; message refused")
            if endpoint.fail_open:
                return rules.ALLOW
            raise TimpyError("the message could not be checked by the service that approves messages; "
                             "try again later", Code.UNAVAILABLE) from None
        finally:
            self.latency.labels(endpoint.name).observe(time.perf_counter() - started)
        self.checks.labels(endpoint.name, verdict.action).inc()
        return verdict

    def on_commit(self, committed: Sequence[Committed]) -> None:
        """The writer listener, at the conversation's owner: hand the commit's
        ``message.stored`` events to the recorder (no waiting here)."""
        if not self._stored_wanted:
            return
        items = [("message.stored", message_event_id(c.message), message_data(c.message), message_owner(c.message))
                 for c in committed if c.numbered_here]
        if not items:
            return
        recording = _Recording(items)
        for _, eid, _, _ in items:
            self._recording[eid] = recording
        try:
            self._record_send.send_nowait(recording)
        except trio.WouldBlock:
            log.warning("webhooks: %d commits wait for the outbox; these events are refused (their sends fail, "
                        "and are emitted when sent again)", RECORD_QUEUE)
            self._failed([recording])

    async def hold(self, result: SendResult) -> None:
        """The writer's ack hold: returns once the message's event is in the
        outbox. A duplicate (a retried send) emits it again: its first try's
        event may have been lost with a crash before it was written."""
        if not self._stored_wanted:
            return
        m = result.message
        eid = message_event_id(m)
        recording = self._recording.get(eid)
        if recording is not None:
            await recording.done.wait()
        if result.duplicate or eid in self._unrecorded:
            await self.emit_many([("message.stored", eid, message_data(m), message_owner(m))])
            self._unrecorded.pop(eid, None)

    def _failed(self, recordings: list[_Recording]) -> None:
        for recording in recordings:
            for _, eid, _, _ in recording.items:
                if self._recording.get(eid) is recording:
                    del self._recording[eid]
                self._unrecorded[eid] = None
            recording.done.set()
        while len(self._unrecorded) > UNRECORDED_KEPT:
            self._unrecorded.popitem(last=False)

    async def _record_loop(self) -> None:
        """Write committed messages' events to the outbox, what is waiting in one transaction."""
        while True:
            batch = [await self._record_recv.receive()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._record_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            written = False
            try:
                await self.emit_many([item for recording in batch for item in recording.items])
                written = True
            except TimpyError as exc:
                log.warning("webhooks: events could not be written to the outbox (%s); their sends fail and "
                            "are emitted when sent again", exc.text)
            finally:
                if written:
                    for recording in batch:
                        for _, eid, _, _ in recording.items:
                            if self._recording.get(eid) is recording:
                                del self._recording[eid]
                        recording.done.set()
                else:  # failed, or the node is stopping
                    self._failed(batch)

    # --- delivering --------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=max(self.config.concurrency * 2, 10)))
        return self._client

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver from the outbox until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)  # the client of the checks lives as long
                nursery.start_soon(self._record_loop)
                for endpoint in self.config.endpoints:
                    if any(e != BEFORE_SEND for e in endpoint.events):
                        nursery.start_soon(self._deliver_loop, endpoint)
                task_status.started()
        finally:
            waiting: list[_Recording] = []
            while True:
                try:
                    waiting.append(self._record_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            self._failed(waiting)  # their sends fail (the node is stopping); a retry elsewhere emits them
            if self._client is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self._client.aclose()
                self._client = None

    async def _deliver_loop(self, endpoint: WebhookEndpoint) -> None:
        limiter = trio.CapacityLimiter(self.config.concurrency)
        last_purge = -math.inf
        while True:
            wake = self._wake[endpoint.name]
            retry_at: int | None = None
            try:
                now = self._now()
                if trio.current_time() - last_purge > PURGE_EVERY:
                    last_purge = trio.current_time()
                    await self._store.run(self._outbox.purge, now - int(self.config.keep_delivered * 1000))
                rows = await self._store.run(self._outbox.due, endpoint.name, now, BATCH, self._owns)
                if rows:
                    outcomes: list[Outcome] = []
                    async with trio.open_nursery() as nursery:
                        for row in rows:
                            nursery.start_soon(self._deliver_one, endpoint, row, limiter, outcomes)
                    changed = await self._store.run(self._outbox.settle, outcomes, self._now())
                    await self._copy_out(changed, must=False)
                    if len(rows) == BATCH:
                        continue  # more are due
                    if not all(o.delivered for o in outcomes):
                        retry_at = await self._store.run(self._outbox.next_due, endpoint.name, self._owns)
                else:
                    retry_at = await self._store.run(self._outbox.next_due, endpoint.name, self._owns)
            except TimpyError as exc:
                log.warning("webhook %s: the outbox could not be read (%s); trying again", endpoint.name, exc.text)
            # Asleep until an event is emitted, a retry comes due, or the idle check.
            wait = IDLE_CHECK if retry_at is None else max(0.0, min(IDLE_CHECK, (retry_at - self._now()) / 1000))
            if wait > 0 and not wake.is_set():
                with trio.move_on_after(wait):
                    await wake.wait()
            if wake.is_set():
                self._wake[endpoint.name] = trio.Event()
                await trio.sleep(GATHER)  # events emitted together go out in one batch

    async def _deliver_one(self, endpoint: WebhookEndpoint, row: OutboxRow, limiter: trio.CapacityLimiter,
                           outcomes: list[Outcome]) -> None:
        async with limiter:
            now = self._now()
            started = time.perf_counter()
            error = ""
            try:
                with trio.fail_after(endpoint.timeout):
                    response = await self._http().post(
                        endpoint.url, content=row.body,
                        headers=rules.headers(endpoint.secret, row.event_type, row.event_id, now // 1000, row.body),
                        timeout=endpoint.timeout,
                    )
                if not 200 <= response.status_code < 300:
                    error = f"HTTP status {response.status_code}"
            except (trio.TooSlowError, httpx.HTTPError) as exc:
                error = _reason(exc)
            self.latency.labels(endpoint.name).observe(time.perf_counter() - started)
        if not error:
            self.deliveries.labels(endpoint.name, "delivered").inc()
            outcomes.append(Outcome(row.id, True))
            return
        attempts = row.attempts + 1
        dead = attempts >= self.config.max_attempts
        delay = rules.retry_delay(attempts, self.config.backoff_base, self.config.backoff_max, self._rng.uniform(0.5, 1))
        self.deliveries.labels(endpoint.name, "dead" if dead else "failed").inc()
        if dead:
            log.warning("webhook %s: event %s is a dead letter after %d attempts (%s)", endpoint.name, row.event_id,
                        attempts, error)
        outcomes.append(Outcome(row.id, False, attempts, self._now() + int(delay * 1000), dead, error))

    # --- the dead-letter view (admin API) -----------------------------------

    def _known(self, endpoint: str | None) -> None:
        if endpoint and endpoint not in self._endpoints:
            raise RequestError(f"no webhook endpoint named {endpoint!r}", Code.BAD_REQUEST)

    async def status(self) -> dict[str, Any]:
        counts = await self._store.run(self._outbox.counts)
        return {"endpoints": [
            {"name": e.name, "url": e.url, "events": list(e.events), "timeout": e.timeout, "fail_open": e.fail_open,
             "pending": counts.get((e.name, PENDING), 0), "dead": counts.get((e.name, DEAD), 0)}
            for e in self.config.endpoints
        ]}

    async def dead_letters(self, endpoint: str | None, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        self._known(endpoint)
        rows = await self._store.run(self._outbox.dead, endpoint, after_id, max(1, min(limit, 1000)))
        return [{"id": r.id, "endpoint": r.endpoint, "event_id": r.event_id, "type": r.event_type,
                 "attempts": r.attempts, "created_ms": r.created_ms, "last_error": r.error,
                 "event": r.body.decode("utf-8", "replace")} for r in rows]

    async def retry_dead(self, endpoint: str | None, ids: list[int] | None) -> int:
        self._known(endpoint)
        changed = await self._store.run(self._outbox.retry, endpoint, ids, self._now())
        await self._copy_out(changed, must=False)  # the key's owner, maybe another node, delivers them
        for name in [endpoint] if endpoint else list(self._wake):
            self._wake[name].set()
        return len(changed)

    async def drop_dead(self, endpoint: str | None, ids: list[int] | None) -> int:
        self._known(endpoint)
        changed = await self._store.run(self._outbox.drop, endpoint, ids, self._now())
        await self._copy_out(changed, must=False)
        return len(changed)


def message_event_id(m: ChatMessage) -> str:
    return rules.event_id("message.stored", m.conversation, m.seq)


def message_owner(m: ChatMessage) -> tuple[str, bytes]:
    """A message's events belong to its conversation, as the message does."""
    return ("conv", parse_conversation(m.conversation))


def message_data(m: ChatMessage) -> dict[str, Any]:
    return {"conversation": m.conversation, "seq": m.seq, "sender": m.sender, "recipient": m.recipient,
            "kind": m.kind, "client_id": m.client_id, "time": m.server_time, "ext": dict(m.ext),
            **rules.body_fields(m.body)}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError | httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)
