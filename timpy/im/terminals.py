"""Live terminals: which connections a user has now, and ordered delivery to them.

While a terminal syncs (reads what it missed from storage), live deliveries
for it are held back and merged by inbox position afterwards, so it gets every
message exactly once and in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from timpy.errors import Code
from timpy.im.messages import Delivery


class TerminalLink(Protocol):
    """What the gateway gives the domain for one connected terminal."""

    def push_nowait(self, delivery: Delivery) -> bool:
        """Queue a delivery without waiting; False if the terminal cannot keep up."""

    async def push(self, delivery: Delivery) -> None:
        """Queue a delivery, waiting for room (used while syncing)."""

    def close(self, reason: str, code: Code) -> None:
        """Tell the terminal why (an error with ``code``), then drop the connection;
        the terminal syncs again when it returns."""


@dataclass(eq=False)
class LiveTerminal:
    user_id: bytes
    device_id: bytes
    device: str
    link: TerminalLink
    max_held: int = 10_000
    syncing: bool = False
    _held: list[Delivery] = field(default_factory=list)
    _overflowed: bool = False

    def deliver(self, delivery: Delivery) -> None:
        if self.syncing:
            if len(self._held) >= self.max_held:
                self._held.clear()
                self._overflowed = True  # the sync reads them from storage instead
            elif not self._overflowed:
                self._held.append(delivery)
            return
        if not self.link.push_nowait(delivery):
            self.link.close("too slow to receive messages; reconnect to sync", Code.TOO_SLOW)

    def begin_sync(self) -> None:
        self.syncing = True
        self._held.clear()
        self._overflowed = False

    def finish_sync(self, last_pos: int) -> bool:
        """Go live after a sync that ended at ``last_pos``.

        Returns False when held deliveries were dropped: the caller reads
        storage again from ``last_pos`` and calls this once more.
        """
        if self._overflowed:
            self._overflowed = False
            return False
        held, self._held = self._held, []
        self.syncing = False
        for delivery in held:
            if delivery.pos > last_pos:
                self.deliver(delivery)
        return True


class TerminalRegistry:
    """user id -> device id -> live terminal, on this node."""

    def __init__(self) -> None:
        self._by_user: dict[bytes, dict[bytes, LiveTerminal]] = {}

    def attach(self, terminal: LiveTerminal) -> LiveTerminal | None:
        """Register a terminal; returns the one it replaces (same device), if any."""
        devices = self._by_user.setdefault(terminal.user_id, {})
        old = devices.get(terminal.device_id)
        devices[terminal.device_id] = terminal
        return old

    def detach(self, terminal: LiveTerminal) -> None:
        devices = self._by_user.get(terminal.user_id)
        if devices and devices.get(terminal.device_id) is terminal:
            del devices[terminal.device_id]
            if not devices:
                del self._by_user[terminal.user_id]

    def terminals(self, user_id: bytes) -> list[LiveTerminal]:
        return list(self._by_user.get(user_id, {}).values())

    def deliver(self, user_id: bytes, delivery: Delivery) -> None:
        for terminal in self.terminals(user_id):
            terminal.deliver(delivery)

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_user.values())
