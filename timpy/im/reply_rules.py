"""Replies and mentions: what a message may name (pure).

A reply names the message it answers by ``ext["reply_to"]`` (its seq in the
same conversation); the target must be there and shown (not recalled or
burned, not itself a recall, edit or burned notice). Mentions are
``ext["mentions"]``: user names separated by commas, or ``@all``
(``conversation_rules.mentions``). In a group, ``@all`` is for its owner and
admins, unless the group's profile says ``mention_all = "members"``; a
mentioned name must be a member.
"""

from __future__ import annotations

from timpy.errors import Code, RequestError
from timpy.im.conversation_rules import MENTION_ALL, mentions

MAX_MENTIONS = 50


def reply_target(ext: dict[str, str]) -> int | None:
    """The seq a reply answers, None for a message that is not a reply; a clear error when malformed."""
    raw = ext.get("reply_to")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise RequestError('a reply names the message it answers as ext["reply_to"] = its seq', Code.INVALID_MESSAGE)
    return int(raw)


def check_reply_target(found: bool, gone: bool, acting: bool) -> None:
    """May a reply answer this target? ``found``: stored in the conversation."""
    if not found or gone:
        raise RequestError("the message this replies to is not in the conversation (or it is gone)",
                           Code.NO_SUCH_MESSAGE)
    if acting:
        raise RequestError("a reply answers an ordinary message", Code.BAD_REQUEST)


def check_group_mentions(ext: dict[str, str], members: set[str], sender_is_admin: bool, all_for_members: bool) -> None:
    """May this group message mention whom it mentions? Raises why not."""
    named = mentions(ext)
    if len(named) > MAX_MENTIONS:
        raise RequestError(f"a message mentions at most {MAX_MENTIONS} users", Code.INVALID_MESSAGE)
    if MENTION_ALL in named and not (sender_is_admin or all_for_members):
        raise RequestError("only the group's owner and admins may mention @all", Code.NOT_ALLOWED)
    strangers = sorted(n for n in named - {MENTION_ALL} if n not in members)
    if strangers:
        raise RequestError(f"not in this group: {', '.join(strangers)}", Code.NOT_A_MEMBER)
