"""Replies and mentions: what a message may name (pure).

A reply names the message it answers by ``ext["reply_to"]`` (its seq in the
same conversation); the target must be there and shown (not recalled or
burned, not itself a recall, edit or burned notice). Mentions are
``ext["mentions"]``: user names separated by commas, or ``@all``
(``references.mentions``). In a group, ``@all`` is for its owner and
admins, unless the group's profile says ``mention_all = "members"``; a
mentioned name must be a member.
"""

from __future__ import annotations

from timpy.errors import Code, RequestError

# The reply target rules are core (threads check a root with them too); the replies feature uses them from here.
from timpy.im.references import MENTION_ALL, mentions
from timpy.im.references import check_reply_target as check_reply_target
from timpy.im.references import reply_target as reply_target

MAX_MENTIONS = 50


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
