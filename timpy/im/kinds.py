"""Message kinds that act on an earlier message, and their rules (pure).

A RECALL, EDIT, REACT or BURNED message names its target by ``ext["target"]`` (the
target's sequence number in the same conversation). It is stored and
delivered like any message, so every terminal, live or syncing later, learns
of it; and wherever its row lands (the conversation's owner, a copy beside an
inbox, a replica, another backend) the store applies its effect there
(``effect_of``): a recall or a burn deletes the target's content, an edit
replaces the target's body, a reaction sets its sender's entry in the
target's reactions (a last-writer-wins map ordered by the reaction's seq, so
copies converge whatever order the rows land in). History leaves these
acting messages out and shows their effects instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from timpy.errors import Code, RequestError
from timpy.wire.messages import (
    KIND_BURN,
    KIND_BURNED,
    KIND_DELETED,
    KIND_EDIT,
    KIND_FILE,
    KIND_REACT,
    KIND_RECALL,
    ChatMessage,
    MessageContent,
    reaction_key_error,
    reaction_limit_error,
    with_reaction,
)

ACTING = frozenset({KIND_RECALL, KIND_EDIT, KIND_BURNED, KIND_REACT})
# The acting kinds a user sends: the writer checks their ext (``target_of``)
# before queueing and their target (``check_acting``) before commit. A new
# acting kind is declared here and nowhere else in the writer.
SENT_ACTING = frozenset({KIND_RECALL, KIND_EDIT, KIND_REACT})
# The acting kinds that matter to a file message's attachment
# (``timpy.im.attachments``): an edit of a file message is refused; a recall
# or a burn of one drops its reference (the last one gone deletes the file).
# A reaction to a file message is an ordinary reaction.
ON_FILES = frozenset({KIND_RECALL, KIND_EDIT, KIND_BURNED})
DROPPING_FILES = frozenset({KIND_RECALL, KIND_BURNED})


def target_of(kind: int, ext: dict[str, str]) -> int:
    """The target sequence of an acting message; a clear error when it is
    missing (or, for a reaction, when its reaction is not one)."""
    raw = ext.get("target", "")
    if not raw.isdigit() or int(raw) <= 0:
        raise RequestError(
            'a recall, edit or reaction names its target message as ext["target"] = its seq', Code.INVALID_MESSAGE
        )
    if kind == KIND_REACT:
        problem = reaction_key_error(ext.get("key"))
        if problem:
            raise RequestError(problem, Code.INVALID_MESSAGE)
        if ext.get("on", "1") not in ("0", "1"):
            raise RequestError('a reaction is added with ext["on"] = "1" or removed with "0"', Code.INVALID_MESSAGE)
    return int(raw)


def check_acting(
    kind: int, actor: str, target: ChatMessage | None, now_ms: int, recall_window_ms: int, actor_is_admin: bool,
    ext: Mapping[str, str] | None = None,
) -> None:
    """May ``actor`` send this acting message (its ``kind`` and ``ext``) on ``target``? Raises if not."""
    if target is None or target.kind == KIND_DELETED:
        raise RequestError("no such message in this conversation (or it is gone)", Code.NO_SUCH_MESSAGE)
    if target.kind in ACTING:
        raise RequestError("a recall, edit or reaction acts on an ordinary message", Code.BAD_REQUEST)
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
        if target.kind == KIND_FILE:
            raise RequestError("a file message cannot be edited; recall it and send the file again", Code.NOT_ALLOWED)
    elif kind == KIND_REACT:
        ext = ext or {}
        problem = reaction_limit_error(target.ext, ext.get("key", ""), actor, ext.get("on", "1") == "1")
        if problem:
            raise RequestError(problem, Code.LIMIT_REACHED)


def effect_of(content: bytes, seq: int = 0) -> tuple[int, Callable[[bytes], bytes | None]] | None:
    """What a stored message (its plaintext content, at ``seq``) does to its
    target: the store's hook (``Repository(effect_of=...)``)."""
    kind = MessageContent.kind_of(content)
    if kind is not None and kind not in ACTING:
        return None  # most messages act on nothing: known without making a value of them
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
    if acting.kind == KIND_REACT:
        key, on = acting.ext.get("key", ""), acting.ext.get("on", "1") == "1"

        def react(old: bytes) -> bytes:
            target = MessageContent.unpack(old)
            ext = with_reaction(target.ext, key, acting.sender, seq, on)
            return old if ext is None else replace(target, ext=ext).pack()

        return int(raw), react
    edited_at = acting.ext.get("at", "")

    def edit(old: bytes) -> bytes:
        target = MessageContent.unpack(old)
        return replace(target, body=acting.body, ext={**target.ext, "edited": edited_at or "1"}).pack()

    return int(raw), edit


def deleted_placeholder(conversation: str, seq: int, server_time: int) -> ChatMessage:
    return ChatMessage(conversation, seq, "", "", "", KIND_DELETED, b"", server_time, {})
