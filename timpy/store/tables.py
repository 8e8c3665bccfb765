"""The registry of copied tables: every table whose rows belong to a key,
each declared once (a ``CopiedTable``, beside the feature that owns it).

Replication and repair (``Copies``, ``apply_copies``, the digests of
``features.repair``) and moving keys between backends (``key_stats``,
``forget``, the rebalancer) iterate this list; none of them names a table.

Adding a table: declare it in its feature's module (its ``Copies`` list
name, its ``wire`` number: the next one, never reused; how a copy of its
rows is read, applied, digested, verified and forgotten), then list it
here. ``TABLES`` is in the order a copy is applied: a table after the ones
its rows need (an inbox after its account, a conversation's numbering after
its messages).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table

from timpy.store import schema as s
from timpy.store.features.accounts import ACCOUNTS
from timpy.store.features.attachments import (
    ATTACHMENT_CHUNKS,
    ATTACHMENT_READERS,
    ATTACHMENT_REFS,
    ATTACHMENTS,
)
from timpy.store.features.base import CopiedTable
from timpy.store.features.conversations import CONVERSATIONS
from timpy.store.features.groups import GROUPS
from timpy.store.features.inbox import INBOX
from timpy.store.features.messages import MESSAGES
from timpy.store.features.receipts import READ_MARKS
from timpy.store.features.records import RECORDS
from timpy.store.features.search import SEARCH_INDEX
from timpy.store.features.terminals import TERMINALS
from timpy.store.outbox import OUTBOX

TABLES: tuple[CopiedTable, ...] = (
    ACCOUNTS, GROUPS, MESSAGES, CONVERSATIONS, INBOX, TERMINALS, RECORDS, READ_MARKS, SEARCH_INDEX,
    ATTACHMENTS, ATTACHMENT_CHUNKS, ATTACHMENT_READERS, ATTACHMENT_REFS,  # the row (a tombstone) before the rest
    OUTBOX,  # webhook events, with the key that owns them
)

#: Tables that belong to no key: never copied, digested or moved.
LOCAL_TABLES: tuple[Table, ...] = (s.meta, s.revoked_tokens)


@dataclass(frozen=True)
class KeyKind:
    """A kind of key rows belong to: a conversation, a user or an attachment."""

    name: str
    table: Table  # one row per key held here
    key: str  # its key column
    head: str  # its column saying where the key's numbered slots end
    slots: str  # the ``Copies`` list of its numbered slots
    anchor: str | None = None  # a ``Copies`` list that travels with the slots even without the key's state
    # Its slots fill up in order with no gap below the head (messages, inbox),
    # so a copy of what a side lacks starts after that side's head. Otherwise
    # (chunks, uploaded in any order) a copy starts at the first slot and the
    # side keeps the slots it holds.
    in_order: bool = True
    page: int = 2000  # slots in one copy (node to node, backend to backend)
    noun: str = ""  # the key in a user's words, for logs and errors

    def slot_table(self) -> CopiedTable:
        return next(t for t in TABLES if t.slots_of == self.name)

    def state_tables(self) -> list[CopiedTable]:
        """The tables of the key's versioned state (all but its slots), in ``TABLES`` order."""
        return [t for t in TABLES if self.name in t.kinds and t.slots_of is None]

    def tables(self) -> list[CopiedTable]:
        return [t for t in TABLES if self.name in t.kinds]


KEYS: dict[str, KeyKind] = {
    "conv": KeyKind("conv", s.conversations, "conv_id", "last_seq", "messages", noun="conversation"),
    # an inbox lands only beside its account: the account travels with it
    "user": KeyKind("user", s.accounts, "user_id", "inbox_head", "inbox", anchor="accounts", noun="account"),
    # an attachment's chunks are big: a few at a time (a peer frame is at most 16 MiB)
    "att": KeyKind("att", s.attachments, "att_id", "chunks", "attachment_chunks", in_order=False, page=4,
                   noun="file"),
}


def _check() -> None:
    wires = sorted(t.wire for t in TABLES)
    assert wires == list(range(len(TABLES))), f"wire numbers must be 0..n-1, each once: {wires}"
    names = [t.name for t in TABLES]
    assert len(set(names)) == len(names), f"table names must be unique: {names}"
    for kind in KEYS.values():
        assert sum(t.slots_of == kind.name for t in TABLES) == 1, f"one table of slots for {kind.name} keys"


_check()
