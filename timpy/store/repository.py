"""The repository: every read and write timpy makes, as synchronous
transactions meant to run in a worker thread (see ``Store``).

It is composed of one storage mixin per feature (``timpy.store.features``),
as Synapse composes its data store; the row types are in ``rows``, the
tables that travel with keys in ``tables``, the contract in ``protocol``.

Payload plaintexts come in and go out; sealing and opening happen in the
mixins, with associated data that binds each sealed value to its table,
key and sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from timpy.concurrency import to_worker
from timpy.errors import StorageError
from timpy.store.features.accounts import AccountsStore
from timpy.store.features.attachments import AttachmentsStore
from timpy.store.features.conversation_list import ConversationListStore
from timpy.store.features.conversations import ConversationsStore
from timpy.store.features.groups import GroupsStore
from timpy.store.features.inbox import InboxStore
from timpy.store.features.messages import MessagesStore
from timpy.store.features.meta import SchemaStore
from timpy.store.features.moves import MovesStore
from timpy.store.features.receipts import ReceiptsStore
from timpy.store.features.records import RecordsStore
from timpy.store.features.repair import RepairStore
from timpy.store.features.search import SearchStore
from timpy.store.features.terminals import TerminalsStore
from timpy.store.features.tokens import TokensStore
from timpy.store.protocol import LocalRepository, RepositoryProtocol

T = TypeVar("T")


class Repository(
    SchemaStore,
    AccountsStore,
    ConversationsStore,
    GroupsStore,
    MessagesStore,
    InboxStore,
    TerminalsStore,
    RecordsStore,
    ReceiptsStore,
    TokensStore,
    ConversationListStore,
    SearchStore,
    AttachmentsStore,
    RepairStore,  # with CopiesStore: replication between nodes
    MovesStore,
):
    """One database, every feature's storage: satisfies ``LocalRepository``
    (``RepositoryProtocol`` and what only one database can do)."""


class Store:
    """The repository behind a capacity limiter: storage work runs in worker
    threads and never blocks the trio loop."""

    def __init__(
        self, repo: RepositoryProtocol, threads: int, observe: Callable[[str, float], None] | None = None
    ) -> None:
        self.repo = repo
        self._limiter = trio.CapacityLimiter(threads)
        self.observe = observe  # (operation, seconds) of each storage call, for metrics

    @property
    def local(self) -> LocalRepository:
        """The repository as one database (embedded mode): what replicas and
        node start-up use beyond ``RepositoryProtocol``."""
        if not isinstance(self.repo, Repository):
            raise StorageError("this needs the node's own database; in shared-backend mode there is none")
        return self.repo

    def queued(self) -> int:
        """Storage calls waiting for a worker thread."""
        return self._limiter.statistics().tasks_waiting

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await to_worker(fn, *args, limiter=self._limiter)
        except (OperationalError, SQLAlchemyError) as exc:
            # Only the message: a driver's text may quote parameters.
            raise StorageError(
                f"storage failed ({type(exc).__name__}); the operation had no effect, retry later"
            ) from exc
        finally:
            if self.observe is not None:
                self.observe(getattr(fn, "__name__", "call"), time.perf_counter() - started)

    def close(self) -> None:
        self.repo.close()

