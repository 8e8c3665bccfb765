"""Shared-backend mode: one repository interface over several SQL backends.

Each user and each conversation lives on one backend, chosen by the backend
map's ring (``backends.BackendMap``). The methods are those of
``RepositoryProtocol`` (``tests/store/test_protocol.py`` checks every one,
signature included) and run in worker threads the same way; each one goes to
the backend of its key. A writer batch is split: its messages are numbered in one
transaction per conversation backend, then the members' inbox entries (with a
copy of the message row, so an inbox reads from one backend) are placed in
one transaction per user backend. A retry with the same client message id
finds the stored message and places only what is missing, so a failure
between the two steps is repaired by the retry the sender is told to make.

A backend that fails is marked down for a moment: requests for its keys fail
at once with an error naming it, requests for other backends go on, and the
first request after the pause tries it again.

While a move is in its freeze phase, a write to a key that moves waits (in
its worker thread, bounded) until the key's new place is current. Every
write records the map version it was routed by, so a node can tell the
rebalancer when no write routed by an older map is still running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from timpy.crypto.seal import Sealer
from timpy.errors import StorageError
from timpy.store.backends import BackendMap, BackendSpec, redact_url
from timpy.store.engine import url_engine
from timpy.store.features.attachments import ShardedAttachmentsStore
from timpy.store.features.conversation_list import ShardedConversationListStore
from timpy.store.features.search import ShardedSearchStore
from timpy.store.repository import Repository
from timpy.store.rows import (
    AccountRow,
    Appended,
    Copies,
    EffectOf,
    InboxEntry,
    InboxItem,
    InboxPlaced,
    NewMessage,
    StoredMessage,
    Written,
)

log = logging.getLogger("timpy.store")
T = TypeVar("T")

DOWN_PAUSE = 2.0  # seconds a failed backend is skipped before it is tried again
FREEZE_WAIT = 20.0  # seconds a write waits for a move's freeze to end


class ShardedRepository(ShardedConversationListStore, ShardedSearchStore, ShardedAttachmentsStore):
    def __init__(
        self,
        backend_map: BackendMap,
        sealer: Sealer,
        engine_for: Callable[[BackendSpec], Any] | None = None,
        effect_of: EffectOf | None = None,
    ) -> None:
        self._sealer = sealer
        self._effect_of = effect_of
        self._engine_for = engine_for or (lambda spec: url_engine(spec.url))
        self._repos: dict[str, Repository] = {}
        self._down_until: dict[str, float] = {}
        self._ready: set[str] = set()  # backends whose schema is checked
        self._lock = threading.Lock()
        self._inflight: Counter[int] = Counter()  # map version -> writes running
        self.map = backend_map
        self._open_missing(backend_map)

    # --- the map --------------------------------------------------------------

    def _open_missing(self, backend_map: BackendMap) -> list[str]:
        opened = []
        for name, spec in backend_map.all_specs().items():
            if name not in self._repos:
                self._repos[name] = Repository(self._engine_for(spec), self._sealer, self._effect_of)
                opened.append(name)
        return opened

    def set_map(self, backend_map: BackendMap, force: bool = False) -> list[str]:
        """Route by ``backend_map`` from now on (if newer, or ``force``); returns
        the backends opened for it. Backends it no longer names are closed."""
        with self._lock:
            if backend_map.version <= self.map.version and not force:
                return []
            opened = self._open_missing(backend_map)
            self.map = backend_map
            gone = [n for n in self._repos if n not in backend_map.all_specs()]
            closing = [self._repos.pop(n) for n in gone]
        for repo in closing:
            repo.close()
        return opened

    def drained(self, version: int) -> bool:
        """No write routed by a map older than ``version`` is still running."""
        with self._lock:
            return not any(v < version and n for v, n in self._inflight.items())

    def backend(self, name: str) -> Repository:
        try:
            return self._repos[name]
        except KeyError:
            raise StorageError(f"no backend named {name!r} in the backend map") from None

    @property
    def names(self) -> list[str]:
        return list(self._repos)

    @contextmanager
    def _writing(self, keys: Sequence[bytes]) -> Iterator[BackendMap]:
        """Route a write: wait while any of ``keys`` is frozen, then hold the
        map version until the write is done."""
        deadline = time.monotonic() + FREEZE_WAIT
        while True:
            with self._lock:
                current = self.map
                if not any(current.frozen(k) for k in keys):
                    self._inflight[current.version] += 1
                    break
            if time.monotonic() > deadline:
                raise StorageError(
                    "these keys are being moved to another backend and the move is not finishing; "
                    "retry later (timpy backend status shows the move)"
                )
            time.sleep(0.02)
        try:
            yield current
        finally:
            with self._lock:
                self._inflight[current.version] -= 1
                if not self._inflight[current.version]:
                    del self._inflight[current.version]

    def _on(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a repository call on one backend, naming it in any failure."""
        until = self._down_until.get(name)
        if until is not None and time.monotonic() < until:
            raise StorageError(f"storage backend {name!r} is unavailable (it failed just now); retry later")
        repo = self.backend(name)
        try:
            if name not in self._ready:
                # A backend that was down when the node started, or new in the map.
                repo.create_schema()
                self._ready.add(name)
            result = fn(repo, *args)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                self._down_until[name] = time.monotonic() + DOWN_PAUSE
                log.warning("storage backend %s is unavailable: %s", name, type(exc.orig).__name__)
            raise StorageError(
                f"storage backend {name!r} failed ({type(exc).__name__}); retry later. "
                "Keys on other backends are not affected"
            ) from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"storage backend {name!r} failed ({type(exc).__name__}); retry later") from exc
        self._down_until.pop(name, None)
        return result

    # --- schema ---------------------------------------------------------------

    def create_schema(self) -> None:
        """Check (and create or migrate) the schema of every backend that answers;
        a backend that is down is checked when it first answers."""
        for name in list(self._repos):
            try:
                self._on(name, lambda repo: None)
            except StorageError as exc:
                log.warning("%s", exc.text)

    def load_map(self) -> BackendMap | None:
        """The newest backend map stored in any reachable backend."""
        best: BackendMap | None = None
        for name in list(self._repos):
            try:
                raw = self._on(name, Repository.get_meta, "backend_map")
            except StorageError as exc:
                log.warning("could not read the backend map from %s: %s", name, exc.text)
                continue
            if raw is not None:
                found = BackendMap.unpack(raw)
                if best is None or found.version > best.version:
                    best = found
        return best

    def store_map(self, backend_map: BackendMap) -> int:
        """Write ``backend_map`` to every backend it names; returns how many took it."""
        stored = 0
        for name in list(backend_map.all_specs()):
            if name not in self._repos:
                continue
            try:
                self._on(name, Repository.set_meta, "backend_map", backend_map.pack())
                stored += 1
            except StorageError as exc:
                log.warning("could not store the backend map in %s: %s", name, exc.text)
        if not stored:
            raise StorageError("no backend took the backend map; check that the backends are reachable")
        return stored

    def close(self) -> None:
        with self._lock:
            repos, self._repos = list(self._repos.values()), {}
        for repo in repos:
            repo.close()

    # --- accounts ---------------------------------------------------------------

    def create_account(self, user_id: bytes, secret: bytes, profile: bytes) -> None:
        with self._writing([user_id]) as m:
            self._on(m.place(user_id), Repository.create_account, user_id, secret, profile)

    def update_account(
        self, user_id: bytes, secret: bytes | None = None, profile: bytes | None = None, disabled: bool | None = None
    ) -> int:
        with self._writing([user_id]) as m:
            return self._on(m.place(user_id), Repository.update_account, user_id, secret, profile, disabled)

    def get_account(self, user_id: bytes) -> AccountRow | None:
        return self._on(self.map.place(user_id), Repository.get_account, user_id)

    def get_accounts(self, user_ids: Sequence[bytes]) -> list[AccountRow | None]:
        m = self.map
        found: dict[bytes, AccountRow | None] = {}
        for name, keys in _group(user_ids, m.place).items():
            found.update(zip(keys, self._on(name, Repository.get_accounts, keys), strict=True))
        return [found[u] for u in user_ids]

    def existing_accounts(self, user_ids: Sequence[bytes]) -> set[bytes]:
        m = self.map
        out: set[bytes] = set()
        for name, keys in _group(user_ids, m.place).items():
            out |= self._on(name, Repository.existing_accounts, keys)
        return out

    # --- groups -------------------------------------------------------------------

    def get_group(self, group_id: bytes) -> tuple[bytes, int] | None:
        return self._on(self.map.place(group_id), Repository.get_group, group_id)

    def put_group(self, group_id: bytes, state: bytes, members: Sequence[bytes], expected: int) -> int:
        with self._writing([group_id]) as m:
            return self._on(m.place(group_id), Repository.put_group, group_id, state, members, expected)

    # --- records and read marks ----------------------------------------------------

    def get_record(self, key_id: bytes, kind: str) -> tuple[bytes, int] | None:
        return self._on(self.map.place(key_id), Repository.get_record, key_id, kind)

    def get_records(self, key_ids: Sequence[bytes], kind: str) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for name, keys in _group(key_ids, self.map.place).items():
            out.update(self._on(name, Repository.get_records, keys, kind))
        return out

    def put_record(self, key_id: bytes, kind: str, state: bytes, expected: int) -> int:
        with self._writing([key_id]) as m:
            return self._on(m.place(key_id), Repository.put_record, key_id, kind, state, expected)

    def record_copies(self, key_id: bytes, kind: str) -> Copies:
        return self._on(self.map.place(key_id), Repository.record_copies, key_id, kind)

    def mark_read(self, user_id: bytes, conv_id: bytes, seq: int) -> int:
        with self._writing([user_id]) as m:
            return self._on(m.place(user_id), Repository.mark_read, user_id, conv_id, seq)

    def unread(self, user_id: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
        return self._on(self.map.place(user_id), Repository.unread, user_id, limit)

    def get_message(self, conv_id: bytes, seq: int) -> StoredMessage | None:
        return self._on(self.map.place(conv_id), Repository.get_message, conv_id, seq)

    # --- messages ---------------------------------------------------------------

    def append_messages(self, batch: Sequence[NewMessage], cursors: dict[tuple[bytes, bytes], int] | None = None) -> list[Appended]:
        return self.write_batch(batch, (), cursors).appended

    def write_batch(
        self,
        batch: Sequence[NewMessage],
        inbox_items: Sequence[InboxItem] = (),
        cursors: dict[tuple[bytes, bytes], int] | None = None,
        local_users: frozenset[bytes] | None = None,
        epoch: int = 0,  # unused: the shared databases fence the append themselves
    ) -> Written:
        cursors = cursors or {}
        keys = [n.conv_id for n in batch]
        keys += [u for n in batch for u in n.members if local_users is None or u in local_users]
        keys += [it.user_id for it in inbox_items] + [u for u, _ in cursors]
        with self._writing(keys) as m:
            # 1. Number the messages, one transaction per conversation backend.
            appended: list[Appended | None] = [None] * len(batch)
            for name, indexes in _group(range(len(batch)), lambda i: m.place(batch[i].conv_id)).items():
                done = self._on(
                    name, Repository.write_batch, [batch[i] for i in indexes], (), None, frozenset()
                ).appended
                for i, a in zip(indexes, done, strict=True):
                    appended[i] = a
            # 2. Place inbox entries, one transaction per user backend.
            items: list[tuple[int, InboxItem]] = []  # (index in batch, or -1 - index in inbox_items)
            for i, (n, a) in enumerate(zip(batch, appended, strict=True)):
                assert a is not None
                for u in dict.fromkeys(n.members):
                    if local_users is None or u in local_users:
                        items.append((i, InboxItem(u, n.conv_id, a.seq, n.dedup, a.created_ms, a.sealed)))
            items += [(-1 - j, it) for j, it in enumerate(inbox_items)]
            by_backend: dict[str, list[tuple[int, InboxItem]]] = defaultdict(list)
            for origin, it in items:
                by_backend[m.place(it.user_id)].append((origin, it))
            cursors_by: dict[str, dict[tuple[bytes, bytes], int]] = defaultdict(dict)
            for (u, d), pos in cursors.items():
                cursors_by[m.place(u)][(u, d)] = pos
            placed: list[InboxPlaced | None] = [None] * len(inbox_items)
            inbox_of: list[dict[bytes, int]] = [{} for _ in batch]
            for name in sorted(set(by_backend) | set(cursors_by)):
                part = by_backend.get(name, [])
                result = self._on(name, Repository.write_batch, [], [it for _, it in part], cursors_by.get(name))
                for (origin, it), where in zip(part, result.placed, strict=True):
                    if origin < 0:
                        placed[-1 - origin] = where
                    elif where.new:
                        inbox_of[origin][it.user_id] = where.pos
        out = [replace(a, inbox=inbox_of[i]) for i, a in enumerate(appended) if a is not None]
        return Written(out, [p for p in placed if p is not None])

    def user_digest(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """(user id, inbox head) of every user, in id order across the backends,
        each from the backend that holds it now."""
        m = self.map
        merged: list[tuple[bytes, int]] = []
        for b in m.backends:
            merged += [(u, h) for u, h in self._on(b.name, Repository.user_digest, after, limit) if m.place(u) == b.name]
        merged.sort()
        return merged[:limit]

    def conversation_head(self, conv_id: bytes) -> int:
        return self._on(self.map.place(conv_id), Repository.conversation_head, conv_id)

    def inbox_head(self, user_id: bytes) -> int:
        return self._on(self.map.place(user_id), Repository.inbox_head, user_id)

    def open_sealed_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        return next(iter(self._repos.values())).open_sealed_message(conv_id, seq, sealed)

    def conversation_members(self, conv_id: bytes) -> list[bytes]:
        return self._on(self.map.place(conv_id), Repository.conversation_members, conv_id)

    def is_member(self, conv_id: bytes, user_id: bytes) -> bool:
        return self._on(self.map.place(conv_id), Repository.is_member, conv_id, user_id)

    def read_history(
        self, conv_id: bytes, before_seq: int, after_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        return self._on(self.map.place(conv_id), Repository.read_history, conv_id, before_seq, after_seq, limit)

    def read_inbox(self, user_id: bytes, after_pos: int, limit: int) -> list[InboxEntry]:
        return self._on(self.map.place(user_id), Repository.read_inbox, user_id, after_pos, limit)

    def read_inboxes(self, reads: Sequence[tuple[bytes, int, int]]) -> list[list[InboxEntry]]:
        """``read_inbox`` for many, one call per backend."""
        out: dict[int, list[InboxEntry]] = {}
        by_backend: dict[str, list[int]] = {}
        for k, (u, _, _) in enumerate(reads):
            by_backend.setdefault(self.map.place(u), []).append(k)
        for name, ks in by_backend.items():
            got = self._on(name, Repository.read_inboxes, [reads[k] for k in ks])
            out.update(zip(ks, got, strict=True))
        return [out[k] for k in range(len(reads))]

    # --- terminals --------------------------------------------------------------

    def open_terminal(self, user_id: bytes, device_id: bytes, now_ms: int) -> int:
        with self._writing([user_id]) as m:
            return self._on(m.place(user_id), Repository.open_terminal, user_id, device_id, now_ms)

    def open_terminals(self, items: Sequence[tuple[bytes, bytes, int]]) -> list[int]:
        """``open_terminal`` for many, one transaction per backend."""
        out: dict[int, int] = {}
        with self._writing([u for u, _, _ in items]) as m:
            by_backend: dict[str, list[int]] = {}
            for k, (u, _, _) in enumerate(items):
                by_backend.setdefault(m.place(u), []).append(k)
            for name, ks in by_backend.items():
                got = self._on(name, Repository.open_terminals, [items[k] for k in ks])
                out.update(zip(ks, got, strict=True))
        return [out[k] for k in range(len(items))]

    def count_terminals(self, user_id: bytes) -> int:
        return self._on(self.map.place(user_id), Repository.count_terminals, user_id)

    # --- token revocation: on every backend, so any one of them can answer -------

    def revoke_token(self, token_id: bytes, expires_ms: int) -> None:
        failures = []
        names = list(self._repos)
        for name in names:
            try:
                self._on(name, Repository.revoke_token, token_id, expires_ms)
            except StorageError as exc:
                failures.append(exc)
        if len(failures) == len(names):
            raise failures[0]

    def live_revocations(self, now_ms: int) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        answered = 0
        for name in list(self._repos):
            try:
                out.update(self._on(name, Repository.live_revocations, now_ms))
                answered += 1
            except StorageError as exc:
                log.warning("revocations: %s", exc.text)
        if not answered:
            raise StorageError("no storage backend answered; retry later")
        return out

    def describe(self) -> dict[str, object]:
        info = self.map.describe()
        now = time.monotonic()
        for b in info["backends"]:  # type: ignore[union-attr]
            b["up"] = self._down_until.get(b["name"], 0.0) <= now  # type: ignore[index]
        return info


def _group(items: Any, place: Callable[[Any], str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        out[place(item)].append(item)
    return dict(out)


__all__ = ["ShardedRepository", "redact_url"]
