"""The webhook outbox: events waiting to be delivered to an endpoint, in one
table of the node's own store (``webhook_outbox``).

An event is written here before it counts as emitted, so it survives a
restart; the delivery loop (``timpy.im.webhooks``) takes due rows, and marks
each delivered, due again later, or dead (a dead letter, which the admin API
lists, retries or drops). A row is unique by (endpoint, event id): an event
emitted twice (a send retried after a crash, say) is stored once, and while
its delivered row is kept (``[webhooks] keep_delivered``) it is not sent again.
The event type and body are sealed, bound to the row's endpoint and event id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgpack
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)

from timpy.crypto.seal import Sealer, row_ad
from timpy.store.schema import Sealed

PENDING, DEAD, DONE = "pending", "dead", "done"

metadata = MetaData()

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("endpoint", String(40), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("payload", Sealed, nullable=False),  # [event type, body]; AD: webhook_outbox, endpoint, event id
    Column("error", Sealed, nullable=True),  # the last failure, for the dead-letter view
    UniqueConstraint("endpoint", "event_id", name="uq_webhook_outbox_event"),
    Index("ix_webhook_outbox_due", "endpoint", "state", "due_ms"),
)


@dataclass(frozen=True)
class NewEvent:
    endpoint: str
    event_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class OutboxRow:
    id: int
    endpoint: str
    event_id: str
    event_type: str
    body: bytes
    attempts: int
    state: str
    due_ms: int
    created_ms: int
    error: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt did to its row."""

    id: int
    delivered: bool
    attempts: int = 0
    due_ms: int = 0
    dead: bool = False
    error: str = ""


class Outbox:
    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        self.engine = engine
        self._sealer = sealer

    def create(self) -> None:
        metadata.create_all(self.engine)

    def _ad(self, endpoint: str, event_id: str, part: str = "") -> bytes:
        return row_ad("webhook_outbox", endpoint, event_id, part)

    def add(self, events: list[NewEvent], now_ms: int) -> int:
        """Store the events not stored already (by endpoint and id); returns how many were new."""
        if not events:
            return 0
        t = webhook_outbox
        added = 0
        with self.engine.begin() as conn:
            by_endpoint: dict[str, list[NewEvent]] = {}
            for e in events:
                by_endpoint.setdefault(e.endpoint, []).append(e)
            for endpoint, group in by_endpoint.items():
                known: set[str] = set()
                wanted = list(dict.fromkeys(e.event_id for e in group))
                for i in range(0, len(wanted), 200):
                    known |= set(conn.execute(select(t.c.event_id).where(
                        t.c.endpoint == endpoint, t.c.event_id.in_(wanted[i:i + 200]))).scalars())
                rows = []
                for e in group:
                    if e.event_id in known:
                        continue
                    known.add(e.event_id)
                    payload = self._sealer.seal(msgpack.packb([e.event_type, e.body]), self._ad(endpoint, e.event_id))
                    rows.append({"endpoint": endpoint, "event_id": e.event_id, "state": PENDING, "attempts": 0,
                                 "due_ms": now_ms, "created_ms": now_ms, "payload": payload, "error": None})
                if rows:
                    conn.execute(insert(t), rows)
                    added += len(rows)
        return added

    def _row(self, r: object) -> OutboxRow:
        event_type, body = msgpack.unpackb(self._sealer.open(r.payload, self._ad(r.endpoint, r.event_id)))  # type: ignore[attr-defined]
        error = ""
        if r.error is not None:  # type: ignore[attr-defined]
            error = self._sealer.open(r.error, self._ad(r.endpoint, r.event_id, "error")).decode()  # type: ignore[attr-defined]
        return OutboxRow(r.id, r.endpoint, r.event_id, event_type, bytes(body), r.attempts, r.state,  # type: ignore[attr-defined]
                         r.due_ms, r.created_ms, error)  # type: ignore[attr-defined]

    def due(self, endpoint: str, now_ms: int, limit: int) -> list[OutboxRow]:
        t = webhook_outbox
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.endpoint == endpoint, t.c.state == PENDING, t.c.due_ms <= now_ms)
                                .order_by(t.c.due_ms, t.c.id).limit(limit)).all()
        return [self._row(r) for r in rows]

    def next_due(self, endpoint: str) -> int | None:
        t = webhook_outbox
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(t.c.due_ms)).where(
                t.c.endpoint == endpoint, t.c.state == PENDING)).scalar()

    def settle(self, outcomes: Iterable[Outcome], now_ms: int) -> None:
        t = webhook_outbox
        with self.engine.begin() as conn:
            for o in outcomes:
                if o.delivered:
                    conn.execute(update(t).where(t.c.id == o.id).values(state=DONE, due_ms=now_ms, error=None))
                    continue
                row = conn.execute(select(t.c.endpoint, t.c.event_id).where(t.c.id == o.id)).first()
                if row is None:
                    continue
                error = self._sealer.seal(o.error.encode(), self._ad(row.endpoint, row.event_id, "error"))
                conn.execute(update(t).where(t.c.id == o.id).values(
                    state=DEAD if o.dead else PENDING, attempts=o.attempts, due_ms=o.due_ms, error=error))

    def dead(self, endpoint: str | None, after_id: int, limit: int) -> list[OutboxRow]:
        t = webhook_outbox
        query = select(t).where(t.c.state == DEAD, t.c.id > after_id)
        if endpoint:
            query = query.where(t.c.endpoint == endpoint)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.id).limit(limit)).all()
        return [self._row(r) for r in rows]

    def retry(self, endpoint: str | None, ids: list[int] | None, now_ms: int) -> int:
        """Dead letters (all of an endpoint's, or these) due again now, with a fresh count of attempts."""
        t = webhook_outbox
        query = update(t).where(t.c.state == DEAD)
        if endpoint:
            query = query.where(t.c.endpoint == endpoint)
        if ids is not None:
            query = query.where(t.c.id.in_(ids))
        with self.engine.begin() as conn:
            return conn.execute(query.values(state=PENDING, attempts=0, due_ms=now_ms)).rowcount

    def drop(self, endpoint: str | None, ids: list[int] | None) -> int:
        t = webhook_outbox
        query = delete(t).where(t.c.state == DEAD)
        if endpoint:
            query = query.where(t.c.endpoint == endpoint)
        if ids is not None:
            query = query.where(t.c.id.in_(ids))
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    def purge(self, before_ms: int) -> int:
        """Forget delivered events older than ``before_ms``."""
        t = webhook_outbox
        with self.engine.begin() as conn:
            return conn.execute(delete(t).where(t.c.state == DONE, t.c.due_ms < before_ms)).rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        """Rows by (endpoint, state)."""
        t = webhook_outbox
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.endpoint, t.c.state, func.count()).group_by(t.c.endpoint, t.c.state)).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}
