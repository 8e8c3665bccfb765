"""The repository's contract, one protocol composed of one per feature (each
declared beside its storage mixin in ``timpy.store.features``).

``RepositoryProtocol`` is what the layers above read and write through
``Store.repo``; both ``Repository`` (one database) and ``ShardedRepository``
(shared-backend mode) satisfy it, and ``tests/store/test_protocol.py``
checks that each has every method with the same signature.

``LocalRepository`` adds what only one database can do: copies of its keys
for replicas and for a move, digests and repair between replicas (embedded
mode), verifying and forgetting moved keys (one backend at a time, driven
by the rebalancer), its own meta values.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from timpy.store.features.accounts import AccountsProtocol
from timpy.store.features.conversation_list import ConversationListProtocol
from timpy.store.features.conversations import ConversationsProtocol
from timpy.store.features.copies import CopiesProtocol, DigestProtocol
from timpy.store.features.groups import GroupsProtocol
from timpy.store.features.inbox import InboxProtocol
from timpy.store.features.messages import MessagesProtocol, UndoProtocol
from timpy.store.features.meta import MetaProtocol, SchemaProtocol
from timpy.store.features.moves import MovesProtocol
from timpy.store.features.receipts import ReceiptsProtocol
from timpy.store.features.records import RecordsProtocol
from timpy.store.features.repair import RepairProtocol
from timpy.store.features.search import SearchProtocol
from timpy.store.features.terminals import TerminalsProtocol
from timpy.store.features.tokens import TokensProtocol


@runtime_checkable
class RepositoryProtocol(
    SchemaProtocol,
    AccountsProtocol,
    ConversationsProtocol,
    GroupsProtocol,
    MessagesProtocol,
    InboxProtocol,
    TerminalsProtocol,
    RecordsProtocol,
    ReceiptsProtocol,
    TokensProtocol,
    ConversationListProtocol,
    SearchProtocol,
    DigestProtocol,
    Protocol,
):
    """Every feature's reads and writes, whatever the backends."""


@runtime_checkable
class LocalRepository(
    RepositoryProtocol, MetaProtocol, CopiesProtocol, UndoProtocol, RepairProtocol, MovesProtocol, Protocol
):
    """A repository over one database."""
