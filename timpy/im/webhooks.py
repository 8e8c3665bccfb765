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
owns them, the owner of the key they belong to (the conversation, or the
user: ``EventSink.emit``'s ``owner``): an event counts as emitted once it is
there. They are copied to the key's replicas with the write quorum of
messages; a copy that misses the quorum fails nothing: the operation that
emitted the event has committed its change, so its event is kept to be
copied again (``_copy_loop``, with backoff, until the quorum has it; repair
copies it too), and meanwhile it is on the owner's disk, which delivers it.
Where the operation itself replicates its key's state (a registration, a
group change: the catalog's ``replicate``), the key's outbox rows are part
of that state (``OUTBOX`` is a table of the registry), so the event reaches
the replicas in the same quorum write as the change. Only the key's current
owner delivers events; after a ring change (an owner stopped for good, say)
the next owner delivers what is pending, under the same event id. A
message's event is handed off by a writer listener (``on_commit``: no
waiting in the writer task) to the recorder task, which writes each commit's
events in one outbox transaction; the writer's ack hold (``hold``) waits for
that before the sender is acknowledged, so an acknowledged message always
has its event (a send retried after a failure is a duplicate: the hold
emits it again under the same id, stored once).
One delivery loop per endpoint posts due events, signed
(``webhook_rules``), ``concurrency`` at a time; a failure is tried again
after an exponential, bounded, jittered delay, and after ``max_attempts``
becomes a dead letter the admin API lists, retries or drops; the cluster's
dead letters are gathered from every member (``cluster_dead_letters``, the
catalog's ``webhooks.dead``), each listed by the node that delivers it. Each
change of an event's state is copied to the key's replicas the same way
(kept and copied again when the quorum was missed; meanwhile a new owner may
send the event again, which at least once allows and the event id lets
receivers drop).

An outbox file of an earlier version (``outbox.sqlite3`` in the data
directory) is drained into the outbox once, when the webhooks start: its
pending events and dead letters are taken in under their event ids, each
given the key its event belongs to, and the file is deleted.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from timpy.cluster import catalog as ops
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
    from timpy.im.peers import Peers
    from timpy.im.writer import Committed

log = logging.getLogger("timpy.webhooks")

BEFORE_SEND = "message.before_send"
BATCH = 256
IDLE_CHECK = 5.0  # seconds between looks at the outbox when nothing woke the loop
GATHER = 0.01  # seconds a woken loop lets more events arrive before it reads the outbox
PURGE_EVERY = 60.0
RECORD_QUEUE = 4096  # commits whose events wait for the recorder; more fail their acks (the retry emits them)
UNRECORDED_KEPT = 100_000  # ids of events whose recording failed, until their sender's hold writes them
UNCOPIED_KEPT = 100_000  # events whose copy missed the write quorum, to copy again (past it, repair copies them)
COPY_RETRY = (0.5, 30.0)  # seconds before copying those again: the first wait, doubled after each miss up to the last
LEGACY_OUTBOX = "outbox.sqlite3"  # an earlier version's outbox file in the data directory
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
        peers: Peers | None = None,
        legacy_outbox: Path | None = None,
        user_id_of: Callable[[str], bytes] | None = None,
    ) -> None:
        """``owns``: whether this node delivers a key's events now (None: every
        event here is this node's); ``to_replicas``: copies a key's outbox
        rows to its replicas (None: no node copies, as with shared backends);
        ``peers``: the members asked for the cluster's dead letters (this
        node answers them too); ``legacy_outbox``: an earlier version's outbox
        file, drained at start when it is there, its events given their keys
        (a user's by ``user_id_of`` its name)."""
        self.config = config
        self._owns = owns
        self._to_replicas = to_replicas
        self._peers = peers
        self._legacy = legacy_outbox
        self._user_id_of = user_id_of
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
        self._uncopied: OrderedDict[EventRef, None] = OrderedDict()  # copies that missed the quorum, to try again
        self._copy_wake = trio.Event()
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
        self.copy_misses = Counter("timpy_webhook_copy_misses", "Copies of outbox rows to their key's replicas that "
                                   "missed the write quorum (each kept and copied again)", registry=r)
        if peers is not None:
            peers.serve(ops.WEBHOOKS_DEAD, self._dead_here)

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
        """Write the events to the outbox (they are emitted: raises only when
        that write fails), then copy them to their keys' replicas, waiting for
        the write quorum; a copy that misses it is kept and tried again in the
        background (emitting them again, as a retried send does, stores them
        once)."""
        now = self._now()
        events = [e for item in items for e in self._events(item, now)]
        if not events:
            return
        await self._store.run(self._outbox.add, events, now)
        for name in {e.endpoint for e in events}:
            self.emitted.labels(name).inc(sum(1 for e in events if e.endpoint == name))
        for name in {e.endpoint for e in events}:
            self._wake[name].set()
        await self._copy_out([(e.endpoint, e.event_id) for e in events])

    async def _copy_out(self, events: Iterable[EventRef]) -> int:
        """Copy these events' rows, as they are now, to their keys' replicas,
        one key at a time in parallel, each waiting for its write quorum; the
        events of a key that missed it are kept for ``_copy_loop``. Returns
        how many were kept."""
        if self._to_replicas is None:
            return 0
        by_key = await self._store.run(self._outbox.copies, list(events))
        if not by_key:
            return 0
        missed: list[EventRef] = []
        reasons: list[str] = []
        to_replicas = self._to_replicas

        async def one(key: bytes, rows: list[Any]) -> None:
            async def fetch() -> Copies:
                return Copies(outbox=rows)
            try:
                await to_replicas(key, fetch)
            except (TimpyError, LookupError) as exc:  # LookupError: no ring yet (the node is joining)
                missed.extend((row[2], row[3]) for row in rows)
                reasons.append(exc.text if isinstance(exc, TimpyError) else "this node has no ring yet")

        async with trio.open_nursery() as nursery:
            for (_, key), rows in by_key.items():
                nursery.start_soon(one, key, rows)
        if missed:
            self.copy_misses.inc(len(missed))
            log.info("webhooks: %d events reached fewer replicas than the write quorum (%s); they are delivered "
                     "from here and copied again", len(missed), reasons[0])
            for ref in missed:
                self._uncopied[ref] = None
                self._uncopied.move_to_end(ref)
            while len(self._uncopied) > UNCOPIED_KEPT:
                self._uncopied.popitem(last=False)  # repair copies it
            self._copy_wake.set()
        return len(missed)

    @property
    def uncopied(self) -> list[EventRef]:
        """Events whose copy to their replicas is still to be made again."""
        return list(self._uncopied)

    async def _copy_loop(self) -> None:
        """Copy again the events whose copy missed the write quorum, waiting
        longer after each miss (a replica that is away for a while)."""
        wait = COPY_RETRY[0]
        while True:
            if not self._uncopied:
                wait = COPY_RETRY[0]
                await self._copy_wake.wait()
            self._copy_wake = trio.Event()
            await trio.sleep(wait)
            batch = list(self._uncopied)[:BATCH * 4]
            for ref in batch:
                self._uncopied.pop(ref, None)
            try:
                missed = await self._copy_out(batch)
            except TimpyError as exc:  # the outbox could not be read: keep them
                log.warning("webhooks: the outbox could not be read to copy events (%s); trying again", exc.text)
                for ref in batch:
                    self._uncopied.setdefault(ref, None)
                missed = len(batch)
            wait = min(wait * 2, COPY_RETRY[1]) if missed else COPY_RETRY[0]

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
                nursery.start_soon(self._copy_loop)
                if self._legacy is not None:
                    nursery.start_soon(self._drain_legacy, self._legacy)
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
                    await self._copy_out(changed)
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
        await self._copy_out(changed)  # the key's owner, maybe another node, delivers them
        for name in [endpoint] if endpoint else list(self._wake):
            self._wake[name].set()
        return len(changed)

    async def drop_dead(self, endpoint: str | None, ids: list[int] | None) -> int:
        self._known(endpoint)
        changed = await self._store.run(self._outbox.drop, endpoint, ids, self._now())
        await self._copy_out(changed)
        return len(changed)

    async def _dead_here(self, a: ops.DeadLettersOf) -> list[ops.DeadLetter]:
        """A member's answer for the cluster's view: its dead letters of the
        keys it delivers (a replica's copy of another owner's is not listed:
        each dead letter comes once, from its key's owner)."""
        rows = await self._store.run(self._outbox.dead, a.endpoint or None, a.after_id, max(1, min(a.limit, 1000)),
                                     self._owns)
        return [ops.DeadLetter(r.id, r.endpoint, r.event_id, r.event_type, r.attempts, r.created_ms, r.error, r.body)
                for r in rows]

    async def cluster_dead_letters(self, endpoint: str | None, cursor: str = "", limit: int = 100) -> dict[str, Any]:
        """The dead letters of every member, each from the node that delivers
        it (``node``; ``id`` is that node's, for its retry and drop), up to
        ``limit`` per member; ``next`` is the cursor of the members that
        have more (None: none has), ``unanswered`` the members that did not
        answer (their dead letters are missing from this page)."""
        self._known(endpoint)
        after = _read_cursor(cursor)
        limit = max(1, min(limit, 1000))
        peers = self._peers
        members = sorted(peers.placement.members) if peers is not None else []
        rows: list[dict[str, Any]] = []
        unanswered: dict[str, str] = {}
        more: dict[str, int] = {}

        async def ask(member: str) -> None:
            assert peers is not None
            args = ops.DeadLettersOf(endpoint or "", after.get(member, 0), limit)
            try:  # this node's own answer even when it is cut off from the majority
                found = await (self._dead_here(args) if member == peers.self_id
                               else peers.call(member, ops.WEBHOOKS_DEAD, args))
            except TimpyError as exc:
                unanswered[member] = exc.text
                return
            rows.extend({"node": member, **_dead_view(d)} for d in found)
            if len(found) == limit:
                more[member] = found[-1].id

        async with trio.open_nursery() as nursery:
            for member in members:
                if member in after or not after:  # a cursor names only the members with more
                    nursery.start_soon(ask, member)
        rows.sort(key=lambda d: (d["created_ms"], d["node"], d["id"]))
        return {"dead": rows, "next": _write_cursor(more) if more else None, "unanswered": unanswered}

    # --- an earlier version's outbox file ----------------------------------------

    async def _drain_legacy(self, path: Path) -> None:
        """Take the pending events and dead letters of an earlier version's
        outbox file into the outbox, each with the key its event belongs to,
        then delete the file. Idempotent: stopped halfway, the next start
        takes in the rest (an event here already is left alone)."""
        if not path.exists():
            return
        try:
            rows = await self._store.run(self._outbox.legacy, path)
            adopted = [replace(r, kind=kind, key=key) for r in rows for kind, key in [self._legacy_owner(r)]]
            added = await self._store.run(self._outbox.adopt, adopted)
        except TimpyError as exc:
            log.error("webhooks: the outbox file %s of an earlier version could not be taken in (%s); its events "
                      "are not delivered yet. The file is kept and tried again at the next start; if it cannot "
                      "be opened, check that this node has the cluster key it had then", path, exc.text)
            return
        unknown = sorted({r.endpoint for r in adopted} - set(self._endpoints))
        log.warning("webhooks: %d events of an earlier version's outbox file %s taken in (%d new: %d pending, "
                    "%d dead letters)%s; the file is deleted", len(adopted), path, added,
                    sum(1 for r in adopted if r.state == PENDING), sum(1 for r in adopted if r.state == DEAD),
                    f"; endpoints no longer configured: {', '.join(unknown)}" if unknown else "")
        for r in adopted:  # copied to their keys' replicas in the background (the ring may not be formed yet)
            if r.key:
                self._uncopied[(r.endpoint, r.event_id)] = None
        self._copy_wake.set()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        for event in self._wake.values():
            event.set()

    def _legacy_owner(self, row: OutboxRow) -> tuple[str, bytes]:
        """The key an event of the earlier version belongs to, from its body
        (``("", b"")``, delivered by this node alone, when it names none)."""
        try:
            data = json.loads(row.body)["data"]
            if row.event_type == "message.stored":
                return message_owner_of(data["conversation"])
            if row.event_type == "group.changed":
                return message_owner_of(data["group"])
            if row.event_type.startswith("user.") and self._user_id_of is not None:
                return ("user", self._user_id_of(data["user"]))
        except (ValueError, KeyError, TypeError, TimpyError):
            pass
        return ("", b"")


def message_event_id(m: ChatMessage) -> str:
    return rules.event_id("message.stored", m.conversation, m.seq)


def message_owner(m: ChatMessage) -> tuple[str, bytes]:
    """A message's events belong to its conversation, as the message does."""
    return message_owner_of(m.conversation)


def message_owner_of(conversation: str) -> tuple[str, bytes]:
    return ("conv", parse_conversation(conversation))


def _dead_view(d: ops.DeadLetter) -> dict[str, Any]:
    return {"id": d.id, "endpoint": d.endpoint, "event_id": d.event_id, "type": d.event_type, "attempts": d.attempts,
            "created_ms": d.created_ms, "last_error": d.error, "event": d.body.decode("utf-8", "replace")}


def _write_cursor(after: dict[str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(after, sort_keys=True).encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> dict[str, int]:
    """The cursor of ``cluster_dead_letters``: each member with more, and the last id seen of it."""
    if not cursor:
        return {}
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(after, dict) and all(isinstance(k, str) and type(v) is int for k, v in after.items()):
            return after
    except ValueError:
        pass
    raise RequestError("cursor is the 'next' value of a previous answer, unchanged", Code.BAD_REQUEST)


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
