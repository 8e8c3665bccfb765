"""Logged-in clients for the feature tests: the users registered, then one
client each, spread over the places given (a node's URL or an in-memory
cluster's connectors), each synced before the test goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

import timpy
from tests.conftest import PASSWORD, users
from timpy.client import Connector


@asynccontextmanager
async def clients(at: list[str | Connector], *names: str, **kw: Any) -> AsyncIterator[list[timpy.Client]]:
    await users(at[0], *names)
    async with AsyncExitStack() as stack:
        out = []
        for i, name in enumerate(names):
            c = await stack.enter_async_context(timpy.connect(at[i % len(at)], name, PASSWORD, **kw))
            await c.wait_synced()
            out.append(c)
        yield out


async def code_of(call: Awaitable[object]) -> timpy.Code:
    """The error code a request is refused with (it must be refused)."""
    with pytest.raises(timpy.RemoteError) as e:
        await call
    return e.value.code
