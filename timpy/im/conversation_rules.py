"""The conversation list ("recent chats"): what an entry shows and the order (pure).

An entry is derived from rows that live with the user (its inbox, its read
marks, its ``convs`` record), so every node and device that reads them sees
the same list. This module holds the rules:

- the ``convs`` record: the user's flags per conversation (muted, pinned,
  archived), the groups the user is in (with their names, so a group with no
  message yet is listed) and the groups the user left (no longer listed);
- counting: a message is unread when another user sent it after the user's
  read mark, and it is not a recall, edit or burned notice, nor gone; it
  mentions the user when its ``ext["mentions"]`` names the user or ``@all``;
- order: pinned first, then the newest activity first, then the
  conversation id; archived entries are listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from timpy.im.references import mentions_user

MAX_FLAGGED = 10_000  # conversations with flags per user


@dataclass(frozen=True)
class Flags:
    muted: bool = False
    pinned: bool = False
    archived: bool = False

    def bits(self) -> int:
        return int(self.muted) | int(self.pinned) << 1 | int(self.archived) << 2

    @classmethod
    def of_bits(cls, bits: int) -> Flags:
        return cls(bool(bits & 1), bool(bits & 2), bool(bits & 4))


@dataclass(frozen=True)
class UserConversations:
    """The ``convs`` record of one user."""

    flags: dict[str, Flags] = field(default_factory=dict)  # conversation id (hex) -> flags
    groups: dict[str, tuple[str, int]] = field(default_factory=dict)  # group id -> (name, joined ms)
    left: frozenset[str] = frozenset()  # groups the user is no longer in

    def pack(self) -> dict[str, Any]:
        return {
            "f": {c: f.bits() for c, f in sorted(self.flags.items()) if f.bits()},
            "g": {g: [n, ms] for g, (n, ms) in sorted(self.groups.items())},
            "l": sorted(self.left),
        }

    @classmethod
    def unpack(cls, raw: Any) -> UserConversations:
        if not raw:
            return cls()
        return cls(
            {str(c): Flags.of_bits(int(b)) for c, b in dict(raw.get("f", {})).items()},
            {str(g): (str(v[0]), int(v[1])) for g, v in dict(raw.get("g", {})).items()},
            frozenset(str(g) for g in raw.get("l", [])),
        )

    def flags_of(self, conversation: str) -> Flags:
        return self.flags.get(conversation, Flags())


def set_flags(
    state: UserConversations, conversation: str, muted: bool | None, pinned: bool | None, archived: bool | None,
) -> UserConversations:
    """Change some of a conversation's flags (None: keep)."""
    old = state.flags_of(conversation)
    new = Flags(
        old.muted if muted is None else bool(muted),
        old.pinned if pinned is None else bool(pinned),
        old.archived if archived is None else bool(archived),
    )
    flags = dict(state.flags)
    if new.bits():
        if conversation not in flags and len(flags) >= MAX_FLAGGED:
            raise ValueError(f"flags are kept for at most {MAX_FLAGGED} conversations")
        flags[conversation] = new
    else:
        flags.pop(conversation, None)
    return replace(state, flags=flags)


def in_group(state: UserConversations, group: str, name: str, now_ms: int) -> UserConversations:
    """The user is (still) a member of ``group``, named ``name``."""
    groups = dict(state.groups)
    joined = groups.get(group, (name, now_ms))[1]
    groups[group] = (name, joined)
    return replace(state, groups=groups, left=state.left - {group})


def out_of_group(state: UserConversations, group: str) -> UserConversations:
    """The user left, was removed, or the group was dissolved."""
    groups = dict(state.groups)
    groups.pop(group, None)
    flags = dict(state.flags)
    flags.pop(group, None)
    return replace(state, groups=groups, flags=flags, left=state.left | {group})


@dataclass(frozen=True)
class Counted:
    unread: int
    mentions: int


def count_unread(
    me: str, read_seq: int, messages: list[tuple[int, str, int, dict[str, str], bool]], acting: frozenset[int],
) -> Counted:
    """Unread and mentioning messages among ``messages``: (seq, sender, kind, ext, gone)."""
    unread = mentioned = 0
    for seq, sender, kind, ext, gone in messages:
        if seq <= read_seq or gone or sender == me or kind in acting:
            continue
        unread += 1
        if mentions_user(ext, me):
            mentioned += 1
    return Counted(unread, mentioned)


@dataclass(frozen=True)
class Activity:
    """Where an entry sorts: its conversation, flags and newest activity."""

    conversation: str
    last_ms: int
    last_pos: int  # the user's inbox position of its newest message (0: none yet)
    flags: Flags


def order_key(a: Activity) -> tuple[int, int, int, str]:
    return (0 if a.flags.pinned else 1, -a.last_ms, -a.last_pos, a.conversation)


def visible(
    activities: list[Activity], archived: bool, offset: int, limit: int,
) -> tuple[list[Activity], int]:
    """One page of the list (archived ones, or the others), and how many there are in all."""
    chosen = sorted((a for a in activities if a.flags.archived == archived), key=order_key)
    return chosen[max(0, offset): max(0, offset) + max(0, limit)], len(chosen)


def activities(
    inbox: list[tuple[str, int, int, str]], state: UserConversations,
) -> tuple[dict[str, Activity], dict[str, str]]:
    """The list's entries from the newest inbox message of each conversation
    (conversation, position, ms, the parent it is a thread of or ""), and the
    threads found (thread -> parent). A thread is not an entry: its activity
    counts for its parent's. Groups the user left are left out; groups the user
    is in without a message yet are in, from when the user joined."""
    seen: dict[str, Activity] = {}
    threads: dict[str, str] = {}

    def bump(conv: str, ms: int, pos: int) -> None:
        old = seen.get(conv)
        if old is None or (ms, pos) > (old.last_ms, old.last_pos):
            seen[conv] = Activity(conv, ms, pos, state.flags_of(conv))

    for conv, pos, ms, parent in inbox:
        if parent:
            threads[conv] = parent
            conv = parent
        if conv not in state.left:
            bump(conv, ms, pos)
    for group, (_name, joined) in state.groups.items():
        if group not in seen:
            seen[group] = Activity(group, joined, 0, state.flags_of(group))
    return seen, threads
