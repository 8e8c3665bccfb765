"""Replies and mentions, checked where a message is numbered (``reply_rules``).

A reply's target is looked up by the conversation's owner before the batch
that holds the reply is stored (a writer ``Check``): it must be in
the conversation and shown. A group message's mentions are checked by the
group's owner against the group (``Groups.send_checks``): ``@all`` for its
owner and admins (or every member, when the group's profile says
``mention_all = "members"``), mentioned names must be members. Mentions are
counted per user in the conversation list (``conversation_rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timpy.errors import TimpyError
from timpy.im import kinds
from timpy.im import reply_rules as rules
from timpy.im.writer import Append
from timpy.store.repository import Store
from timpy.wire.messages import MessageContent


class Replies:
    """Writer check (``timpy.im.writer.Check``): a reply's target must be in
    its conversation and shown. At the conversation's owner, in the writer,
    because only there are the conversation's rows sure to be current (a
    check before queueing, on the sender's node, may hold no copy)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def __call__(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        refused: dict[Append, TimpyError] = {}
        for p in appends:
            try:
                await self.check(p.new.conv_id, p.content.ext)
            except TimpyError as exc:
                refused[p] = exc
        return refused

    async def check(self, conv_id: bytes, ext: dict[str, str]) -> None:
        """Raises why a message with this ``ext`` may not be stored in ``conv_id`` (reply target)."""
        target = rules.reply_target(ext)
        if target is None:
            return
        row = await self._store.run(self._store.repo.get_message, conv_id, target)
        if row is None or row.deleted:
            rules.check_reply_target(row is not None, True, False)
            return
        kind = MessageContent.unpack(row.content).kind
        rules.check_reply_target(True, False, kind in kinds.ACTING)

    @staticmethod
    def check_group(group: Any, sender: str, _kind: int, ext: dict[str, str]) -> None:
        """The groups' hook (a ``group_rules.Group``): who may mention whom."""
        rules.check_group_mentions(
            ext, set(group.members), group.is_admin(sender), group.profile.get("mention_all") == "members"
        )
