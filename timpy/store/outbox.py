"""The webhook outbox: events waiting to be delivered to an endpoint, one
row per (endpoint, event) in the ``webhook_outbox`` table.

Every event belongs to a key, the one whose owner emits it (``owner_kind``,
``owner_key``): a message's and a group's events to the conversation, a
user's (registered, login, logout) to the user. Its rows are copied with the
key's other rows (``OUTBOX``, a table of the registry ``timpy.store.tables``):
to the key's replicas when written and when their state changes, by catch-up,
repair and moves like any keyed row. Only the key's current owner delivers
them (``due``'s ``owns``), so when the owner is lost the next one, a replica,
finds them pending and delivers them under the same event id.

An event is written here before it counts as emitted, so it survives a
restart; the delivery loop (``timpy.im.webhooks``) takes due rows, and marks
each delivered, due again later, or dead (a dead letter, which the admin API
lists, retries or drops). Every such change raises the row's ``version``; a
copy keeps the row with the highest version (at equal versions, delivered
over dead over pending), so a delivered event is not sent again by another
node once its state has reached it. A row is unique by (endpoint, event id):
an event emitted twice (a send retried after a crash, say) is stored once,
and while its delivered row is kept (``[webhooks] keep_delivered``) it is not
sent again. The event type and body are sealed, bound to the row's endpoint
and event id (the same on every node: the rows travel sealed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
from sqlalchemy import Engine, and_, delete, func, insert, inspect, or_, select, update

from timpy.crypto.seal import Sealer, row_ad
from timpy.store.engine import sqlite_engine
from timpy.store.features.base import CopiedTable, StoreBase, insert_missing
from timpy.store.migrations import add_outbox_owners
from timpy.store.rows import Row
from timpy.store.schema import webhook_outbox

PENDING, DEAD, DONE = "pending", "dead", "done"
_RANK = {PENDING: 0, DEAD: 1, DONE: 2}  # at equal versions, the state that wins a copy
_PAGE = 512  # rows read at a time when looking for the due ones this node owns

#: Whether this node delivers the events of a key now: (kind, key) -> bool.
Owns = Callable[[str, bytes], bool]
#: A changed row, by endpoint and event id (what a copy to the key's replicas reads).
EventRef = tuple[str, str]


@dataclass(frozen=True)
class NewEvent:
    endpoint: str
    event_id: str
    event_type: str
    body: bytes
    kind: str = ""  # the key that owns the event: "conv" or "user" ("": a row only this node delivers)
    key: bytes = b""


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
    kind: str = ""
    key: bytes = b""


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
        """The table, where no store schema made it (shared-backend mode's own file)."""
        with self.engine.begin() as conn:
            add_outbox_owners(conn)

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
                                 "due_ms": now_ms, "created_ms": now_ms, "payload": payload, "error": None,
                                 "owner_kind": e.kind or None, "owner_key": e.key or None, "version": 0})
                if rows:
                    conn.execute(insert(t), rows)
                    added += len(rows)
        return added

    def legacy(self, path: Path) -> list[OutboxRow]:
        """``read_legacy`` with this outbox's key (the one that sealed the file's rows)."""
        return read_legacy(path, self._sealer)

    def _row(self, r: object) -> OutboxRow:
        event_type, body = msgpack.unpackb(self._sealer.open(r.payload, self._ad(r.endpoint, r.event_id)))  # type: ignore[attr-defined]
        error = ""
        if r.error is not None:  # type: ignore[attr-defined]
            error = self._sealer.open(r.error, self._ad(r.endpoint, r.event_id, "error")).decode()  # type: ignore[attr-defined]
        return OutboxRow(r.id, r.endpoint, r.event_id, event_type, bytes(body), r.attempts, r.state,  # type: ignore[attr-defined]
                         r.due_ms, r.created_ms, error, r.owner_kind or "", bytes(r.owner_key or b""))  # type: ignore[attr-defined]

    def due(self, endpoint: str, now_ms: int, limit: int, owns: Owns | None = None) -> list[OutboxRow]:
        """The endpoint's pending rows due by ``now_ms``, oldest first, of keys
        this node owns (``owns``; None: all of them)."""
        t = webhook_outbox
        query = select(t).where(t.c.endpoint == endpoint, t.c.state == PENDING, t.c.due_ms <= now_ms)
        out: list[OutboxRow] = []
        with self.engine.connect() as conn:
            if owns is None:
                return [self._row(r) for r in conn.execute(query.order_by(t.c.due_ms, t.c.id).limit(limit))]
            after: tuple[int, int] | None = None
            while len(out) < limit:
                page = query
                if after is not None:
                    page = page.where(or_(t.c.due_ms > after[0], and_(t.c.due_ms == after[0], t.c.id > after[1])))
                rows = conn.execute(page.order_by(t.c.due_ms, t.c.id).limit(_PAGE)).all()
                out += [self._row(r) for r in rows if _owned(owns, r)][: limit - len(out)]
                if len(rows) < _PAGE:
                    break
                after = (rows[-1].due_ms, rows[-1].id)
        return out

    def next_due(self, endpoint: str, owns: Owns | None = None) -> int | None:
        """When the endpoint's next pending row this node owns comes due."""
        t = webhook_outbox
        pending = (t.c.endpoint == endpoint, t.c.state == PENDING)
        with self.engine.connect() as conn:
            if owns is None:
                return conn.execute(select(func.min(t.c.due_ms)).where(*pending)).scalar()
            rows = conn.execute(select(t.c.owner_kind, t.c.owner_key, func.min(t.c.due_ms)).where(*pending)
                                .group_by(t.c.owner_kind, t.c.owner_key))
            owned = [int(r[2]) for r in rows if _owned(owns, r)]
        return min(owned, default=None)

    def settle(self, outcomes: Iterable[Outcome], now_ms: int) -> list[EventRef]:
        """Record what delivery attempts did; returns the rows changed (their
        new state goes to their key's replicas)."""
        t = webhook_outbox
        changed: list[EventRef] = []
        with self.engine.begin() as conn:
            for o in outcomes:
                row = conn.execute(select(t.c.endpoint, t.c.event_id).where(t.c.id == o.id)).first()
                if row is None:
                    continue
                changed.append((row.endpoint, row.event_id))
                if o.delivered:
                    conn.execute(update(t).where(t.c.id == o.id).values(
                        state=DONE, due_ms=now_ms, error=None, version=t.c.version + 1))
                    continue
                error = self._sealer.seal(o.error.encode(), self._ad(row.endpoint, row.event_id, "error"))
                conn.execute(update(t).where(t.c.id == o.id).values(
                    state=DEAD if o.dead else PENDING, attempts=o.attempts, due_ms=o.due_ms, error=error,
                    version=t.c.version + 1))
        return changed

    def copies(self, events: Iterable[EventRef]) -> dict[tuple[str, bytes], list[Row]]:
        """The rows of these events as copied (``OUTBOX``), by owner key (a row
        with none is not copied)."""
        t = webhook_outbox
        wanted = list(dict.fromkeys(events))
        out: dict[tuple[str, bytes], list[Row]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 200):
                chunk = wanted[i:i + 200]
                ids = list({e for _, e in chunk})
                keep = set(chunk)
                for r in conn.execute(select(t).where(t.c.event_id.in_(ids), t.c.owner_key.is_not(None))):
                    if (r.endpoint, r.event_id) in keep:
                        out.setdefault((r.owner_kind, bytes(r.owner_key)), []).append(_wire(r))
        return out

    def dead(self, endpoint: str | None, after_id: int, limit: int, owns: Owns | None = None) -> list[OutboxRow]:
        """Dead letters after ``after_id``, by id; of keys this node owns
        (``owns``: the ones it would deliver; None: every row held here)."""
        t = webhook_outbox
        query = select(t).where(t.c.state == DEAD)
        if endpoint:
            query = query.where(t.c.endpoint == endpoint)
        out: list[OutboxRow] = []
        with self.engine.connect() as conn:
            while len(out) < limit:
                rows = conn.execute(query.where(t.c.id > after_id).order_by(t.c.id).limit(_PAGE)).all()
                out += [self._row(r) for r in rows if owns is None or _owned(owns, r)][: limit - len(out)]
                if len(rows) < _PAGE:
                    break
                after_id = int(rows[-1].id)
        return out

    def adopt(self, rows: Iterable[OutboxRow]) -> int:
        """Take in rows as they are (state, attempts, due time, last error),
        each with the key it is given; a row whose (endpoint, event id) is
        here already is left alone. Returns how many were new."""
        t = webhook_outbox
        wanted = list(rows)
        added = 0
        with self.engine.begin() as conn:
            for i in range(0, len(wanted), 200):
                chunk = wanted[i:i + 200]
                have = {(r.endpoint, r.event_id) for r in conn.execute(select(t.c.endpoint, t.c.event_id).where(
                    t.c.event_id.in_(list({r.event_id for r in chunk}))))}
                fresh = []
                for r in chunk:
                    if (r.endpoint, r.event_id) in have:
                        continue
                    have.add((r.endpoint, r.event_id))
                    error = None if not r.error else self._sealer.seal(
                        r.error.encode(), self._ad(r.endpoint, r.event_id, "error"))
                    fresh.append({
                        "endpoint": r.endpoint, "event_id": r.event_id, "state": r.state, "attempts": r.attempts,
                        "due_ms": r.due_ms, "created_ms": r.created_ms, "error": error, "version": 0,
                        "payload": self._sealer.seal(msgpack.packb([r.event_type, r.body]),
                                                     self._ad(r.endpoint, r.event_id)),
                        "owner_kind": r.kind or None, "owner_key": r.key or None})
                if fresh:
                    conn.execute(insert(t), fresh)
                    added += len(fresh)
        return added

    def _dead(self, conn: Any, endpoint: str | None, ids: list[int] | None) -> list[tuple[int, str, str]]:
        t = webhook_outbox
        query = select(t.c.id, t.c.endpoint, t.c.event_id).where(t.c.state == DEAD)
        if endpoint:
            query = query.where(t.c.endpoint == endpoint)
        if ids is not None:
            query = query.where(t.c.id.in_(ids))
        return [(int(r[0]), r[1], r[2]) for r in conn.execute(query)]

    def retry(self, endpoint: str | None, ids: list[int] | None, now_ms: int) -> list[EventRef]:
        """Dead letters (all of an endpoint's, or these) due again now, with a
        fresh count of attempts; returns the rows changed."""
        t = webhook_outbox
        with self.engine.begin() as conn:
            dead = self._dead(conn, endpoint, ids)
            for i in range(0, len(dead), 200):
                conn.execute(update(t).where(t.c.id.in_([d[0] for d in dead[i:i + 200]])).values(
                    state=PENDING, attempts=0, due_ms=now_ms, version=t.c.version + 1))
        return [(e, i) for _, e, i in dead]

    def drop(self, endpoint: str | None, ids: list[int] | None, now_ms: int = 0) -> list[EventRef]:
        """Give up dead letters (all of an endpoint's, or these); returns the
        rows changed. A row with an owner key is marked done rather than
        deleted, so its replicas drop it too, and it goes with the delivered
        rows (``purge``); one without is deleted."""
        t = webhook_outbox
        with self.engine.begin() as conn:
            dead = self._dead(conn, endpoint, ids)
            for i in range(0, len(dead), 200):
                chunk = [d[0] for d in dead[i:i + 200]]
                conn.execute(delete(t).where(t.c.id.in_(chunk), t.c.owner_key.is_(None)))
                conn.execute(update(t).where(t.c.id.in_(chunk)).values(
                    state=DONE, due_ms=now_ms, error=None, version=t.c.version + 1))
        return [(e, i) for _, e, i in dead]

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


def read_legacy(path: Path, sealer: Sealer) -> list[OutboxRow]:
    """The events still pending or dead in an outbox file of an earlier
    version (``outbox.sqlite3``, which a shared-backend node kept in its data
    directory: the table without owner keys), opened; none when the file has
    no outbox table."""
    engine = sqlite_engine(path)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("webhook_outbox"):
                return []
            t = webhook_outbox
            rows = conn.execute(select(t.c.id, t.c.endpoint, t.c.event_id, t.c.state, t.c.attempts, t.c.due_ms,
                                       t.c.created_ms, t.c.payload, t.c.error)
                                .where(t.c.state != DONE).order_by(t.c.id)).all()
    finally:
        engine.dispose()
    out = []
    for r in rows:
        ad = row_ad("webhook_outbox", r.endpoint, r.event_id, "")
        event_type, body = msgpack.unpackb(sealer.open(r.payload, ad))
        error = "" if r.error is None else sealer.open(
            r.error, row_ad("webhook_outbox", r.endpoint, r.event_id, "error")).decode()
        out.append(OutboxRow(int(r.id), r.endpoint, r.event_id, event_type, bytes(body), int(r.attempts), r.state,
                             int(r.due_ms), int(r.created_ms), error))
    return out


def _owned(owns: Owns, r: Any) -> bool:
    return r.owner_key is None or owns(r.owner_kind, bytes(r.owner_key))


def _wire(r: Any) -> Row:
    return (r.owner_kind, bytes(r.owner_key), r.endpoint, r.event_id, r.state, int(r.attempts), int(r.due_ms),
            int(r.created_ms), bytes(r.payload), None if r.error is None else bytes(r.error), int(r.version))


class OutboxTable(CopiedTable):
    """The outbox rows of a key travel with it, so the key's next owner
    delivers what its last one had not."""

    name, wire, table, key_column, kinds = "outbox", 13, webhook_outbox, "owner_key", ("conv", "user")
    columns = "kind, key, endpoint, event id, state, attempts, due ms, created ms, sealed payload, sealed error, version"

    def unpack(self, raw: Any) -> Row:
        k, key, endpoint, eid, state, attempts, due, created, payload, error, version = raw
        return (str(k), bytes(key), str(endpoint), str(eid), str(state), int(attempts), int(due), int(created),
                bytes(payload), None if error is None else bytes(error), int(version))

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        t = webhook_outbox
        return [_wire(r) for r in conn.execute(select(t).where(t.c.owner_kind == kind, t.c.owner_key == key))]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A copy's row wins over the one here when its version is higher (at
        an equal one: delivered over dead over pending); new rows are added."""
        t = webhook_outbox
        changed = 0
        for i in range(0, len(rows), 200):
            chunk = rows[i:i + 200]
            have = {(r.endpoint, r.event_id): (int(r.version), _RANK.get(r.state, 0)) for r in conn.execute(
                select(t.c.endpoint, t.c.event_id, t.c.version, t.c.state).where(
                    t.c.event_id.in_(list({row[3] for row in chunk}))))}
            fresh, newer = [], []
            for k, key, endpoint, eid, state, attempts, due, created, payload, error, version in chunk:
                values = {"state": state, "attempts": attempts, "due_ms": due, "payload": payload, "error": error,
                          "version": version}
                mine = have.get((endpoint, eid))
                if mine is None:
                    fresh.append({"endpoint": endpoint, "event_id": eid, "created_ms": created, "owner_kind": k,
                                  "owner_key": key, **values})
                    have[(endpoint, eid)] = (version, _RANK.get(state, 0))
                elif (version, _RANK.get(state, 0)) > mine:
                    newer.append((endpoint, eid, values))
                    have[(endpoint, eid)] = (version, _RANK.get(state, 0))
            if fresh:
                insert_missing(conn, t, fresh)
            for endpoint, eid, values in newer:
                conn.execute(update(t).where(t.c.endpoint == endpoint, t.c.event_id == eid).values(**values))
            changed += len(fresh) + len(newer)
        return changed

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        """Rows not yet delivered: a delivered row purged on one replica and
        kept on another is no difference worth a repair."""
        t = webhook_outbox
        for r in conn.execute(select(t.c.owner_key, t.c.endpoint, t.c.event_id, t.c.state, t.c.version).where(
                t.c.owner_kind == kind, t.c.owner_key.in_(keys), t.c.state != DONE)):
            yield bytes(r.owner_key), ("outbox", r.endpoint, r.event_id, r.state, int(r.version))

    def forget(self, conn: Any, kind: str, keys: list[bytes]) -> int:
        t = webhook_outbox
        return int(conn.execute(delete(t).where(t.c.owner_kind == kind, t.c.owner_key.in_(keys))).rowcount)


OUTBOX = OutboxTable()


class ShardedOutbox:
    """The outbox over shared backends (``ShardedRepository``): each event's
    rows in the backend its owner key is placed on, like the key's other
    rows (moves carry them: ``OUTBOX`` is in the registry), so any node that
    takes the key over delivers them. Row ids are this object's: a backend's
    number (in the order this node met it) in the high bits, the backend's
    own id in the low ones."""

    _SHIFT = 44

    def __init__(self, repo: Any, sealer: Sealer) -> None:
        self._repo = repo  # a ShardedRepository (not imported: it imports the registry, which imports this)
        self._sealer = sealer
        self._numbers: dict[str, int] = {}

    def create(self) -> None:
        """Nothing: the table is in every backend's schema."""

    def legacy(self, path: Path) -> list[OutboxRow]:
        return read_legacy(path, self._sealer)

    def _number(self, name: str) -> int:
        return self._numbers.setdefault(name, len(self._numbers))

    def _backend(self, row_id: int) -> tuple[str, int] | None:
        number, local = row_id >> self._SHIFT, row_id & ((1 << self._SHIFT) - 1)
        name = next((n for n, i in self._numbers.items() if i == number), None)
        return None if name is None else (name, local)

    def _on(self, name: str, method: Callable[..., Any], *args: Any) -> Any:
        return self._repo._on(name, lambda repo, *a: method(Outbox(repo.engine, self._sealer), *a), *args)

    def _global(self, name: str, rows: list[OutboxRow]) -> list[OutboxRow]:
        base = self._number(name) << self._SHIFT
        return [replace(r, id=base + r.id) for r in rows]

    def _placed_here(self, name: str, owns: Owns | None) -> Owns:
        """A key's rows count on the backend the map places it on (during a
        move, a copy on the other one is not delivered twice)."""
        place = self._repo.map.place
        return lambda kind, key: place(key) == name and (owns is None or owns(kind, key))

    def add(self, events: list[NewEvent], now_ms: int) -> int:
        keys = list({e.key for e in events if e.key})
        added = 0
        with self._repo._writing(keys) as backend_map:
            by_backend: dict[str, list[NewEvent]] = {}
            for e in events:
                by_backend.setdefault(backend_map.place(e.key or e.event_id.encode()), []).append(e)
            for name, group in by_backend.items():
                added += self._on(name, Outbox.add, group, now_ms)
        return added

    def due(self, endpoint: str, now_ms: int, limit: int, owns: Owns | None = None) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for name in self._repo.names:
            rows += self._global(name, self._on(name, Outbox.due, endpoint, now_ms, limit,
                                                self._placed_here(name, owns)))
        return sorted(rows, key=lambda r: (r.due_ms, r.id))[:limit]

    def next_due(self, endpoint: str, owns: Owns | None = None) -> int | None:
        due = [self._on(name, Outbox.next_due, endpoint, self._placed_here(name, owns)) for name in self._repo.names]
        return min((d for d in due if d is not None), default=None)

    def _by_backend(self, ids: Iterable[int]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for row_id in ids:
            where = self._backend(row_id)
            if where is not None:
                out.setdefault(where[0], []).append(where[1])
        return out

    def settle(self, outcomes: Iterable[Outcome], now_ms: int) -> list[EventRef]:
        by_id = {o.id: o for o in outcomes}
        changed: list[EventRef] = []
        for name, local in self._by_backend(by_id).items():
            base = self._number(name) << self._SHIFT
            changed += self._on(name, Outbox.settle, [replace(by_id[base + i], id=i) for i in local], now_ms)
        return changed

    def copies(self, events: Iterable[EventRef]) -> dict[tuple[str, bytes], list[Row]]:
        return {}  # the backends keep them: no node copies

    def dead(self, endpoint: str | None, after_id: int, limit: int, owns: Owns | None = None) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for name in self._repo.names:
            base = self._number(name) << self._SHIFT
            if after_id >= base + (1 << self._SHIFT) - 1:
                continue
            rows += self._global(name, self._on(name, Outbox.dead, endpoint, max(0, after_id - base), limit,
                                                None if owns is None else self._placed_here(name, owns)))
        return sorted(rows, key=lambda r: r.id)[:limit]

    def adopt(self, rows: Iterable[OutboxRow]) -> int:
        """``Outbox.adopt``, each row in the backend of its key."""
        wanted = list(rows)
        added = 0
        with self._repo._writing(list({r.key for r in wanted if r.key})) as backend_map:
            by_backend: dict[str, list[OutboxRow]] = {}
            for r in wanted:
                by_backend.setdefault(backend_map.place(r.key or r.event_id.encode()), []).append(r)
            for name, group in by_backend.items():
                added += self._on(name, Outbox.adopt, group)
        return added

    def _each(self, ids: list[int] | None) -> dict[str, list[int] | None]:
        if ids is None:
            return dict.fromkeys(self._repo.names)
        return dict(self._by_backend(ids))

    def retry(self, endpoint: str | None, ids: list[int] | None, now_ms: int) -> list[EventRef]:
        return [ref for name, local in self._each(ids).items()
                for ref in self._on(name, Outbox.retry, endpoint, local, now_ms)]

    def drop(self, endpoint: str | None, ids: list[int] | None, now_ms: int = 0) -> list[EventRef]:
        return [ref for name, local in self._each(ids).items()
                for ref in self._on(name, Outbox.drop, endpoint, local, now_ms)]

    def purge(self, before_ms: int) -> int:
        return sum(self._on(name, Outbox.purge, before_ms) for name in self._repo.names)

    def counts(self) -> dict[tuple[str, str], int]:
        total: dict[tuple[str, str], int] = {}
        for name in self._repo.names:
            for k, n in self._on(name, Outbox.counts).items():
                total[k] = total.get(k, 0) + n
        return total
