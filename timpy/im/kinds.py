"""Message kinds that act on an earlier message, and their rules (pure).

A RECALL, EDIT or BURNED message names its target by ``ext["target"]`` (the
target's sequence number in the same conversation). It is stored and
delivered like any message, so every terminal, live or syncing later, learns
of it; and wherever its row lands (the conversation's owner, a copy beside an
inbox, a replica, another backend) the store applies its effect there
(``effect_of``): a recall or a burn deletes the target's content, an edit
replaces the target's body. History leaves these acting messages out and
shows their effects instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from timpy.errors import Code, RequestError
from timpy.wire.messages import (
    KIND_BURN,
    KIND_BURNED,
    KIND_DELETED,
    KIND_EDIT,
    KIND_RECALL,
    ChatMessage,
    MessageContent,
)

ACTING = frozenset({KIND_RECALL, KIND_EDIT, KIND_BURNED})


def target_of(kind: int, ext: dict[str, str]) -> int:
    """The target sequence of an acting message; a clear error when it is missing."""
    raw = ext.get("target", "")
    if not raw.isdigit() or int(raw) <= 0:
        raise RequestError(
            'a recall or edit names its target message as ext["target"] = its seq', Code.INVALID_MESSAGE
        )
    return int(raw)


def check_acting(
    kind: int, actor: str, target: ChatMessage | None, now_ms: int, recall_window_ms: int, actor_is_admin: bool,
) -> None:
    """May ``actor`` send this RECALL or EDIT of ``target``? Raises if not."""
    if target is None or target.kind == KIND_DELETED:
        raise RequestError("no such message in this conversation (or it is gone)", Code.NO_SUCH_MESSAGE)
    if target.kind in ACTING:
        raise RequestError("a recall or edit acts on an ordinary message", Code.BAD_REQUEST)
    if kind == KIND_RECALL:
        if actor != target.sender and not actor_is_admin:
            raise RequestError("only its sender (or a group admin) can recall a message", Code.NOT_ALLOWED)
        if actor == target.sender and not actor_is_admin and now_ms - target.server_time > recall_window_ms:
            raise RequestError(
                f"the recall window of {recall_window_ms // 1000} s has passed for that message", Code.NOT_ALLOWED
            )
    elif kind == KIND_EDIT:
        if actor != target.sender:
            raise RequestError("only its sender can edit a message", Code.NOT_ALLOWED)
        if target.kind == KIND_BURN:
            raise RequestError("a burn-after-reading message cannot be edited", Code.NOT_ALLOWED)


def effect_of(content: bytes) -> tuple[int, Callable[[bytes], bytes | None]] | None:
    """What a stored message (its plaintext content) does to its target: the
    store's hook (``Repository(effect_of=...)``)."""
    try:
        acting = MessageContent.unpack(content)
    except ValueError:
        return None  # not a message content this version writes
    if acting.kind not in ACTING:
        return None
    raw = acting.ext.get("target", "")
    if not raw.isdigit():
        return None
    if acting.kind in (KIND_RECALL, KIND_BURNED):
        return int(raw), lambda _old: None
    edited_at = acting.ext.get("at", "")

    def edit(old: bytes) -> bytes:
        target = MessageContent.unpack(old)
        return replace(target, body=acting.body, ext={**target.ext, "edited": edited_at or "1"}).pack()

    return int(raw), edit


def deleted_placeholder(conversation: str, seq: int, server_time: int) -> ChatMessage:
    return ChatMessage(conversation, seq, "", "", "", KIND_DELETED, b"", server_time, {})
