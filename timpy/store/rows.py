"""The values the store takes and gives: rows of every feature, and
``Copies``, the rows of keys as they travel between nodes and backends.

Plain values, no SQL: the im layer builds and reads them, the storage
mixins (``timpy.store.features``) turn them into rows and back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from timpy.frozen import quick_init

if TYPE_CHECKING:
    from timpy.store.features.base import CopiedTable


@dataclass(frozen=True)
class AccountRow:
    user_id: bytes
    secret: bytes  # opened: the argon2id hash
    profile: bytes  # opened: msgpack, owned by the im layer
    disabled: bool
    version: int = 0


@quick_init
@dataclass(frozen=True)
class NewMessage:
    """A message to append; ``content`` is plaintext, sealed by the store."""

    conv_id: bytes
    members: tuple[bytes, ...]  # users whose inboxes receive it
    sender_id: bytes
    dedup: bytes
    created_ms: int
    content: bytes


@quick_init
@dataclass(frozen=True)
class Appended:
    seq: int
    created_ms: int
    duplicate: bool
    content: bytes  # for a duplicate, the content stored the first time
    inbox: dict[bytes, int]  # user_id -> inbox position (empty for a duplicate)
    sealed: bytes = b""  # the content as stored


@quick_init
@dataclass(frozen=True)
class InboxItem:
    """An inbox entry for a message stored (and numbered) by its conversation's owner."""

    user_id: bytes
    conv_id: bytes
    seq: int
    dedup: bytes
    created_ms: int
    sealed: bytes
    epoch: int = 0  # the stamp of the message's row (``digest.row_stamp``): ring epoch and owner's clock


@quick_init
@dataclass(frozen=True)
class InboxPlaced:
    pos: int
    new: bool  # False: it was in the inbox already


@quick_init
@dataclass(frozen=True)
class Written:
    appended: list[Appended]
    placed: list[InboxPlaced]
    epoch: int = 0  # the stamp the new rows were written with (``digest.row_stamp``)


@dataclass(frozen=True)
class StoredMessage:
    conv_id: bytes
    seq: int
    created_ms: int
    content: bytes  # opened; empty for a message that was recalled or burned
    epoch: int = 0  # the row's stamp (``digest.row_stamp``), where the read gives it

    @property
    def deleted(self) -> bool:
        return not self.content


@dataclass(frozen=True)
class InboxEntry:
    pos: int
    message: StoredMessage


#: What a stored message does to an earlier one of its conversation, given its
#: plaintext content and its own seq (so effects can be ordered whatever order
#: rows land in): None (nothing), or (target seq, transform) where the
#: transform maps the target's content to its new content, or to None to
#: delete it. The messaging layer supplies it (``timpy.im.kinds``); the store
#: applies it wherever the row lands: on the conversation's owner, in a copy
#: beside an inbox, on a replica, on another backend.
EffectOf = Callable[[bytes, int], "tuple[int, Callable[[bytes], bytes | None]] | None"]

Row = tuple[Any, ...]


class Copies:
    """Rows copied between nodes, sealed as stored, as msgpack-friendly tuples:
    one list per table of the registry (``timpy.store.tables``), named as
    the table declares it (``copies.messages``, ``copies.inbox``, ...).

    ``Copies(reads=[...])`` fills some lists; every other one starts empty.
    The row shapes are documented where each table is declared. The lists
    are plain instance attributes (as fast to reach as a dataclass field);
    a name no table declares is refused.
    """

    def __init__(self, **rows: list[Row]) -> None:
        layout = _LAYOUT[0] if _LAYOUT else _layout()
        lists = self.__dict__
        for name in layout.names:
            lists[name] = []
        if rows:
            if not layout.known.issuperset(rows):
                raise TypeError(f"Copies has no table named {sorted(set(rows) - layout.known)}")
            lists.update(rows)

    def __getattr__(self, name: str) -> list[Row]:
        # Only reached for a name that is not one of the lists.
        raise AttributeError(f"Copies has no table named {name!r}")

    def __setattr__(self, name: str, rows: list[Row]) -> None:
        if name not in self.__dict__:
            raise AttributeError(f"Copies has no table named {name!r}")
        self.__dict__[name] = rows

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Copies) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return "Copies(" + ", ".join(f"{n}={r!r}" for n, r in self.__dict__.items() if r) + ")"

    def __bool__(self) -> bool:
        return any(self.__dict__.values())

    def pack(self) -> list[Any]:
        """The lists in the tables' wire order (``CopiedTable.wire``)."""
        rows = self.__dict__
        return [rows[name] for name in _layout().wire_names]

    @classmethod
    def unpack(cls, raw: Any) -> Copies:
        by_wire = _layout().by_wire
        if len(raw) != len(by_wire):
            raise ValueError(f"copies of {len(raw)} tables, expected {len(by_wire)}")
        return cls(**{t.name: [t.unpack(r) for r in rows] for t, rows in zip(by_wire, raw, strict=True)})

    def merge(self, other: Copies) -> None:
        mine = self.__dict__
        for name, rows in other.__dict__.items():
            mine[name] += rows


class _Layout:
    def __init__(self, tables: tuple[CopiedTable, ...]) -> None:
        self.names = [t.name for t in tables]
        self.known = frozenset(self.names)
        self.by_wire = sorted(tables, key=lambda t: t.wire)
        self.wire_names = [t.name for t in self.by_wire]


_LAYOUT: list[_Layout] = []


def _layout() -> _Layout:
    # The registry imports the feature mixins, which import these rows: it is
    # read on first use, not at import.
    if not _LAYOUT:
        from timpy.store.tables import TABLES

        _LAYOUT.append(_Layout(TABLES))
    return _LAYOUT[0]


@dataclass(frozen=True)
class ConversationRows:
    """What a user's rows hold of one conversation (the conversation list)."""

    conv_id: bytes
    last_pos: int  # the user's inbox position of its newest message
    last_ms: int  # and that message's time
    read_seq: int  # the user's read mark
    tail: list[tuple[int, int, bytes]]  # the newest messages (seq, ms, opened content; empty: gone), newest first
    # The messages after ``unread_after``, newest first (bounded): the read
    # mark, or (asked with ``known``) the newest seq the caller had counted
    # with its fingerprint unchanged, so only the messages since are here.
    unread: list[tuple[int, int, bytes]]
    unread_after: int = 0
    # What the messages after the read mark are now, to count only newer ones
    # next time: (the newest seq among them, their fingerprint), or None when
    # the unread ones were more than the bound (not all were read).
    counted: tuple[int, tuple[int, int, int, int]] | None = None
