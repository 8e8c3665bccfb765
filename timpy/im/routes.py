"""Routing records: at a user's owner, which nodes hold the user's live
terminals, so a delivery goes straight to them.

A gateway node records each terminal with the user's owner when it logs in
and again whenever the ring changes (the owner may be new); a dead node's
records are dropped. One device logged in on two nodes: the older one is told
to close (``route.kick``).

The records live in the owner's memory only. An owner that restarts (however
quickly: the others may never see it gone, so their ring does not change)
starts with none, so a node that starts asks every member it meets
(``route.resend``) to record again the terminals it holds whose users the
asker owns; each such terminal is then synced from where it is, so nothing
pushed while the owner had no record of it is missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from timpy.cluster import catalog as ops
from timpy.config import Limits
from timpy.errors import Code, RequestError, TimpyError
from timpy.im.peers import Peers
from timpy.im.terminals import TerminalRegistry
from timpy.wire.messages import ChatMessage, Delivery, MessageContent

log = logging.getLogger("timpy.routes")

RESEND_ATTEMPTS = 5  # tries to reach a member met at start
RESEND_TIMEOUT = 2.0


@dataclass(frozen=True)
class Route:
    node: str
    kind: str  # the device kind given at login
    since: float  # when it attached (monotonic order of logins)


def over_limit(devices: dict[bytes, Route], device_id: bytes, kind: str, limits: Limits) -> list[bytes]:
    """The terminals that must go for ``device_id`` (of ``kind``) to join
    ``devices``, oldest first; raises LIMIT_REACHED when the limits say to
    refuse the new login instead (pure)."""
    others = {d: r for d, r in devices.items() if d != device_id}
    oldest = sorted(others, key=lambda d: others[d].since)
    kick: list[bytes] = []
    per_kind = limits.terminals_per_kind.get(kind)
    same = [d for d in oldest if others[d].kind == kind]
    if per_kind is not None and len(same) >= per_kind:
        kick += same[: len(same) - per_kind + 1]
    left = [d for d in oldest if d not in kick]
    if len(left) >= limits.max_terminals:
        kick += left[: len(left) - limits.max_terminals + 1]
    if kick and limits.terminal_overflow == "refuse":
        what = f"{per_kind} {kind} terminal(s)" if per_kind is not None and len(same) >= per_kind else (
            f"{limits.max_terminals} terminals")
        raise RequestError(
            f"this account has {what} logged in already, the limit; log out of one first", Code.LIMIT_REACHED
        )
    return kick


class PresenceWatcher(Protocol):
    """Told at a user's owner when the user's first live terminal arrives
    (``online`` True) or the last one goes (False). Called in the task that
    changed the records: it must not block (hand waiting work to a task host)."""

    def __call__(self, user_id: bytes, online: bool) -> None: ...


class TerminalWatcher(Protocol):
    """Told at a user's owner when a device's terminal is recorded on a node
    (``attached`` True: a login) or goes (False: a logout, a terminal pushed
    out by the limit, or one lost with a node that left). Called in the task
    that changed the records: it must not block (hand waiting work to a task host)."""

    def __call__(self, user_id: bytes, device_id: bytes, node_id: str, attached: bool) -> None: ...


class Routes:
    def __init__(
        self, peers: Peers, registry: TerminalRegistry, limits: Callable[[], Limits] = Limits, *,
        resend: Callable[[str], int] | None = None, ask_on_start: bool = True,
    ) -> None:
        """``resend(node)``: at a gateway node, when the (re)started owner
        ``node`` asks for its terminals back, record again the terminals here
        whose users it owns; returns how many. ``ask_on_start``: whether to
        ask the members met at start for this node's users' terminals (a node
        that starts with no user's data held owned nobody before)."""
        self._peers = peers
        self._registry = registry
        self._limits = limits
        self._records: dict[bytes, dict[bytes, Route]] = {}
        self._clock = 0.0
        self._watchers: list[PresenceWatcher] = []
        self._terminal_watchers: list[TerminalWatcher] = []
        self._resend = resend
        self._asked: set[str] = set()  # members asked for their terminals since this node started
        self.ask_on_start = ask_on_start
        self.resend_requests = 0  # members that asked this node to record its terminals again
        # The message last pushed here from another node: its members' pushes
        # come one after another, and it is decoded once for all of them.
        self._last_pushed: tuple[str, int, ChatMessage] | None = None
        peers.serve(ops.ROUTE_RESEND, self._on_resend)
        peers.serve(ops.ROUTE_DETACH, self._on_detach)
        peers.serve(ops.ROUTE_KICK, self._on_kick)
        peers.serve(ops.ROUTE_KICK_USER, self._on_kick_user)
        peers.serve(ops.PUSH, self._on_push)

    def watch_presence(self, watcher: PresenceWatcher) -> None:
        """Tell ``watcher`` whenever a user owned here comes online or goes offline."""
        self._watchers.append(watcher)

    def _presence_changed(self, user_id: bytes, online: bool) -> None:
        for watcher in self._watchers:
            watcher(user_id, online)

    def watch_terminals(self, watcher: TerminalWatcher) -> None:
        """Tell ``watcher`` whenever a device's terminal of a user owned here is recorded or goes."""
        self._terminal_watchers.append(watcher)

    def _terminal_changed(self, user_id: bytes, device_id: bytes, node_id: str, attached: bool) -> None:
        for watcher in self._terminal_watchers:
            watcher(user_id, device_id, node_id, attached)

    # --- at the owner -------------------------------------------------------

    def check(self, user_id: bytes, device_id: bytes, kind: str) -> list[bytes]:
        """The terminals this login would push out (raises if it is refused)."""
        return over_limit(self._records.get(user_id, {}), device_id, kind, self._limits())

    def attach(self, user_id: bytes, device_id: bytes, node_id: str, kind: str = "other") -> None:
        kick = self.check(user_id, device_id, kind)
        first = user_id not in self._records
        devices = self._records.setdefault(user_id, {})
        old = devices.get(device_id)
        self._clock += 1
        devices[device_id] = Route(node_id, kind, self._clock if old is None else old.since)
        if old is None or old.node != node_id:
            self._terminal_changed(user_id, device_id, node_id, True)
        if old is not None and old.node != node_id:
            self._kick_device(user_id, device_id, old.node, "logged in again from the same device elsewhere")
        for gone in kick:
            route = devices.pop(gone)
            self._terminal_changed(user_id, gone, route.node, False)
            self._kick_device(user_id, gone, route.node,
                              f"too many terminals of this account: this one ({route.kind}) was the oldest")
        if first:
            self._presence_changed(user_id, True)

    def _kick_device(self, user_id: bytes, device_id: bytes, node: str, reason: str) -> None:
        self._peers.notify(node, ops.ROUTE_KICK, ops.RouteKick(user_id, device_id, reason))

    def _on_detach(self, a: ops.RouteDetach) -> None:
        user_id, device_id = a.user_id, a.device_id
        devices = self._records.get(user_id)
        if devices is not None and device_id in devices and devices[device_id].node == a.node:
            del devices[device_id]
            self._terminal_changed(user_id, device_id, a.node, False)
            if not devices:
                del self._records[user_id]
                self._presence_changed(user_id, False)

    def detach(self, user_id: bytes, device_id: bytes) -> None:
        """A terminal on this node went away: tell the user's owner."""
        self._peers.tell(ops.ROUTE_DETACH, ops.RouteDetach(user_id, device_id, self._peers.self_id))

    def keep_only(self, nodes: frozenset[str]) -> None:
        """Drop the records of nodes that left the ring (dead or gone)."""
        for user_id in list(self._records):
            devices = self._records[user_id]
            for device_id, route in list(devices.items()):
                if route.node not in nodes:
                    del devices[device_id]
                    self._terminal_changed(user_id, device_id, route.node, False)
            if not devices:
                del self._records[user_id]
                self._presence_changed(user_id, False)

    def online(self, user_id: bytes) -> bool:
        """At the owner: has the user a live terminal?"""
        return user_id in self._records

    def devices(self, user_id: bytes) -> frozenset[bytes]:
        """At the owner: the devices of the user with a live terminal."""
        return frozenset(self._records.get(user_id, {}))

    def nodes_of(self, user_id: bytes) -> set[str]:
        """At the owner: the nodes holding the user's live terminals."""
        return {r.node for r in self._records.get(user_id, {}).values()}

    def push(self, user_id: bytes, delivery: Delivery, content: bytes, created_ms: int) -> None:
        """Deliver to the user's terminals here and on the nodes that hold others."""
        self._registry.deliver(user_id, delivery)
        devices = self._records.get(user_id)
        if not devices:
            return
        me = self._peers.self_id
        nodes: set[str] | None = None
        for r in devices.values():
            if r.node != me:
                if nodes is None:
                    nodes = set()
                nodes.add(r.node)
        if nodes is None:
            return  # every terminal of the user is here (a cluster of one: always)
        m = delivery.message
        push = ops.Push(user_id, delivery.pos, m.conversation, m.seq, created_ms, content)
        for node in nodes:
            self._peers.notify(node, ops.PUSH, push)

    def kick_user(self, user_id: bytes, reason: str) -> None:
        """Close every terminal of the user, wherever it is (the operator's kick)."""
        self._peers.tell(ops.ROUTE_KICK_USER, ops.RouteKickUser(user_id, reason))

    def _on_kick_user(self, a: ops.RouteKickUser) -> None:
        user_id, reason = a.user_id, a.reason
        self._kick_all_local(user_id, reason)
        for node in self.nodes_of(user_id) - {self._peers.self_id}:
            self._peers.notify(node, ops.ROUTE_KICK, ops.RouteKick(user_id, b"", reason))

    def _kick_all_local(self, user_id: bytes, reason: str) -> None:
        for terminal in list(self._registry.terminals(user_id)):
            self._registry.detach(terminal)
            terminal.link.close(reason, Code.KICKED)

    def record_count(self) -> int:
        return sum(len(d) for d in self._records.values())

    def not_yet_asked(self, members: Iterable[str]) -> list[str]:
        """The members this node has not asked for its terminals since it
        started (marked as asked now)."""
        if not self.ask_on_start:
            return []
        fresh = sorted(set(members) - self._asked - {self._peers.self_id})
        self._asked.update(fresh)
        return fresh

    async def ask_for_terminals(self, node: str) -> None:
        """Ask ``node`` to record again, with this node, the live terminals it
        holds of the users this node owns (this node just started: it has no
        records). Retried a few times; a member that never answers is left
        to its next ring change."""
        for attempt in range(RESEND_ATTEMPTS):
            try:
                count = await self._peers.call(node, ops.ROUTE_RESEND, ops.RouteResend(self._peers.self_id),
                                               timeout=RESEND_TIMEOUT)
            except (TimpyError, KeyError) as exc:  # KeyError: its address is not known yet
                log.debug("asking %s for its terminals (try %d): %s", node, attempt + 1, exc)
                await trio.sleep(0.2 * (attempt + 1))
                continue
            if count:
                log.info("%s records again %d live terminal(s) of users this node owns", node, count)
            return
        log.info("%s did not answer a request for its terminals; its next ring change records them", node)

    def _on_resend(self, a: ops.RouteResend) -> int:
        self.resend_requests += 1
        return self._resend(a.node) if self._resend is not None else 0

    # --- at a gateway node ----------------------------------------------------

    def _on_push(self, a: ops.Push) -> None:
        last = self._last_pushed
        if last is not None and last[0] == a.conversation and last[1] == a.seq:
            message = last[2]
        else:
            message = MessageContent.unpack(a.content).at(a.conversation, a.seq, a.created_ms)
            self._last_pushed = (message.conversation, message.seq, message)
        self._registry.deliver(a.user_id, Delivery(a.pos, message))

    def _on_kick(self, a: ops.RouteKick) -> None:
        if not a.device_id:  # every terminal of the user on this node
            self._kick_all_local(a.user_id, a.reason or "closed by the operator")
            return
        self._kick_local(a.user_id, a.device_id, a.reason or "logged in again from the same device elsewhere")

    def _kick_local(self, user_id: bytes, device_id: bytes, reason: str) -> None:
        terminal = self._registry.find(user_id, device_id)
        if terminal is not None:
            self._registry.detach(terminal)
            terminal.link.close(reason, Code.KICKED)
