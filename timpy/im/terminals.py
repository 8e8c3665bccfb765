"""Live terminals: which connections a user has now, and ordered delivery to them.

While a terminal syncs (reads what it missed from storage), live deliveries
for it are held back and merged by inbox position afterwards, so it gets every
message exactly once and in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from timpy.errors import Code
from timpy.wire.messages import Delivery, Notice


class TerminalLink(Protocol):
    """What the gateway gives the domain for one connected terminal."""

    def push_nowait(self, delivery: Delivery) -> bool:
        """Queue a delivery without waiting; False if the terminal cannot keep up."""

    async def push(self, delivery: Delivery) -> None:
        """Queue a delivery, waiting for room (used while syncing)."""

    def close(self, reason: str, code: Code) -> None:
        """Tell the terminal why (an error with ``code``), then drop the connection;
        the terminal syncs again when it returns."""

    def push_notice(self, notice: Notice) -> None:
        """Queue a push that is not a stored message (presence, receipt, signal,
        stream data, roster); dropped if the terminal cannot keep up."""


@dataclass(eq=False)
class LiveTerminal:
    user_id: bytes
    device_id: bytes
    device: str
    link: TerminalLink
    kind: str = "other"  # the device kind given at login (terminal limits per kind)
    max_held: int = 10_000
    syncing: bool = False
    last_pos: int = 0  # the highest inbox position given to the link
    # Called when a delivery skips positions (a push from another node was
    # lost): the caller syncs the terminal from ``last_pos``.
    on_gap: Callable[[LiveTerminal], None] | None = None
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
        if delivery.pos <= self.last_pos:
            return  # given already (a sync and a push overlapped)
        if self.last_pos and delivery.pos > self.last_pos + 1 and self.on_gap is not None:
            self.begin_sync()
            self.on_gap(self)
            return
        if not self.link.push_nowait(delivery):
            self.link.close("too slow to receive messages; reconnect to sync", Code.TOO_SLOW)
            return
        self.last_pos = delivery.pos

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
        self.last_pos = max(self.last_pos, last_pos)
        for delivery in sorted(held, key=lambda d: d.pos):
            if delivery.pos > last_pos:
                self.deliver(delivery)
        return True


class TerminalRegistry:
    """user id -> device id -> live terminal, on this node."""

    def __init__(self) -> None:
        self._by_user: dict[bytes, dict[bytes, LiveTerminal]] = {}
        self.delivered = 0  # deliveries handed to live terminals here (metrics)

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
            self.delivered += 1

    def find(self, user_id: bytes, device_id: bytes) -> LiveTerminal | None:
        return self._by_user.get(user_id, {}).get(device_id)

    def all(self) -> list[LiveTerminal]:
        return [t for devices in self._by_user.values() for t in devices.values()]

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_user.values())
