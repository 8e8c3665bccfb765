"""Limits changed at run time (``Node.set_limits``) reach every feature that
reads them: each takes the node's limits as a provider at construction, so
nothing patches a feature's attributes from outside."""

from __future__ import annotations

import timpy
from tests.conftest import PASSWORD, node_config, users
from tests.support.clients import code_of


async def test_changed_limits_hold_for_accounts_and_groups_at_once() -> None:
    async with timpy.open_node(node_config()) as node:
        await users(node.tcp_url, "ann", "ben", "cy")
        node.set_limits(min_password_length=20, max_group_size=2)
        assert await code_of(timpy.register(node.tcp_url, "dee", PASSWORD)) == timpy.Code.WEAK_PASSWORD
        await timpy.register(node.tcp_url, "dee", "a-password-of-twenty-chars")
        async with timpy.connect(node.tcp_url, "ann", PASSWORD) as ann:
            assert await code_of(ann.create_group("three", ["ben", "cy"])) == timpy.Code.GROUP_FULL
            await ann.create_group("two", ["ben"])
        node.set_limits(max_group_size=3)
        async with timpy.connect(node.tcp_url, "ann", PASSWORD) as ann:
            await ann.create_group("three", ["ben", "cy"])
