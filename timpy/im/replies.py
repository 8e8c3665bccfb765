"""Replies and mentions, checked where a message is numbered (``reply_rules``).

A reply's target is looked up by the conversation's owner before the batch
that holds the reply is stored (the writer's ``before_commit``): it must be in
the conversation and shown. A group message's mentions are checked by the
group's owner against the group (``Groups.send_checks``): ``@all`` for its
owner and admins (or every member, when the group's profile says
``mention_all = "members"``), mentioned names must be members. Mentions are
counted per user in the conversation list (``conversation_rules``).
"""

from __future__ import annotations

from typing import Any

import msgpack

from timpy.im import kinds
from timpy.im import reply_rules as rules
from timpy.store.repository import Store


class Replies:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def check(self, conv_id: bytes, _kind: int, ext: dict[str, str]) -> None:
        """The writer's hook: a reply's target must be there and shown."""
        target = rules.reply_target(ext)
        if target is None:
            return
        row = await self._store.run(self._store.repo.get_message, conv_id, target)
        if row is None or row.deleted:
            rules.check_reply_target(row is not None, True, False)
            return
        kind = int(msgpack.unpackb(row.content, raw=False)[4])
        rules.check_reply_target(True, False, kind in kinds.ACTING)

    @staticmethod
    def check_group(group: Any, sender: str, _kind: int, ext: dict[str, str]) -> None:
        """The groups' hook (a ``group_rules.Group``): who may mention whom."""
        rules.check_group_mentions(
            ext, set(group.members), group.is_admin(sender), group.profile.get("mention_all") == "members"
        )
