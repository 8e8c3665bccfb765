"""What a message refers to, read from its ``ext`` (pure): the message it
answers and the users it mentions.

Core conventions of the message content, shared by the features that act on
them: replies and mentions (``reply_rules``: who may mention whom), threads
(a thread's root is a reply target too) and the conversation list (mention
counts).
"""

from __future__ import annotations

from timpy.errors import Code, RequestError

MENTION_ALL = "@all"


def reply_target(ext: dict[str, str]) -> int | None:
    """The seq a reply answers, None for a message that is not a reply; a clear error when malformed."""
    raw = ext.get("reply_to")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise RequestError('a reply names the message it answers as ext["reply_to"] = its seq', Code.INVALID_MESSAGE)
    return int(raw)


def check_reply_target(found: bool, gone: bool, acting: bool) -> None:
    """May a reply (or a thread) answer this target? ``found``: stored in the conversation."""
    if not found or gone:
        raise RequestError("the message this replies to is not in the conversation (or it is gone)",
                           Code.NO_SUCH_MESSAGE)
    if acting:
        raise RequestError("a reply answers an ordinary message", Code.BAD_REQUEST)


def mentions(ext: dict[str, str]) -> frozenset[str]:
    """The names (and ``@all``) a message mentions: ``ext["mentions"]``, comma-separated."""
    raw = ext.get("mentions", "")
    return frozenset(n.strip().casefold() for n in raw.split(",") if n.strip())


def mentions_user(ext: dict[str, str], name: str) -> bool:
    named = mentions(ext)
    return MENTION_ALL in named or name.casefold() in named
