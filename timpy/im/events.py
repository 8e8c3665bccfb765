"""Events that features report for integrations (webhooks): the small
interface a feature is given, so it never imports the module that sends them.

Each event is reported once, by the node that owns it: the conversation's
owner for messages and group changes, the user's owner for registrations,
logins and logouts. ``emit`` returns once the event is durable (it is in the
outbox); it never fails because the event's copy to the key's replicas
missed the write quorum (the change that emitted it is committed: the copy
is made again later), only when the outbox itself could not be written.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol


def event_id(*parts: bytes | str | int) -> str:
    """An idempotency key that the same event always gets (hex, 32 characters)."""
    h = hashlib.blake2b(digest_size=16, person=b"timpy-webhook")
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part.to_bytes(8, "big") if isinstance(part, int) else part
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.hexdigest()


class EventSink(Protocol):
    def wants(self, event_type: str) -> bool: ...
    async def emit(self, event_type: str, event_id: str, data: dict[str, Any], owner: tuple[str, bytes]) -> None: ...


class NoEvents:
    """Where nothing listens."""

    def wants(self, event_type: str) -> bool:
        return False

    async def emit(self, event_type: str, event_id: str, data: dict[str, Any], owner: tuple[str, bytes]) -> None:
        return None


NO_EVENTS = NoEvents()
