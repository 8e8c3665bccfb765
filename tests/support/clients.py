"""Logged-in clients for the feature tests: the users registered, then one
client each, spread over the places given (a node's URL or an in-memory
cluster's connectors), each synced before the test goes on; the code a
request is refused with; a send retried while its owner is down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

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


async def send_until_acked(client: timpy.Client, to: str, body: str, client_id: str) -> None:
    """Retry with the same client id while the owner is down (bounded)."""
    for _ in range(200):
        try:
            await client.send(to, body, client_id=client_id)
            return
        except timpy.RemoteError as exc:
            if exc.code != timpy.Code.UNAVAILABLE:
                raise
            await trio.sleep(0.2)
    raise AssertionError(f"{body} was never acknowledged")
