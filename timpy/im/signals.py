"""Pushes that are not stored messages (presence, receipts, typing and other
signals, stream data, roster changes), to users' live terminals wherever
they are.

A push to users goes to each user's owner (one request per owner node), which
knows from its routing records which nodes hold the user's terminals, and
forwards it there (one request per node). A push to given terminals (rooms)
goes straight to the nodes that hold them. Nothing is stored or retried: a
terminal that is offline, or too slow, misses it.
"""

from __future__ import annotations

from collections.abc import Iterable

from timpy.im.peers import Peers
from timpy.im.routes import Routes
from timpy.im.terminals import TerminalRegistry
from timpy.wire.messages import Notice, pack_notice, unpack_notice

Skip = tuple[bytes, bytes] | None  # (user id, device id) of the terminal that caused it: not told


class Signals:
    def __init__(self, peers: Peers, registry: TerminalRegistry, routes: Routes) -> None:
        self._peers = peers
        self._registry = registry
        self._routes = routes
        self.pushed = 0  # pushes handed to terminals on this node (metrics)
        rpc = peers.rpc
        if rpc is not None:
            rpc.register("signal.route", self._on_route)
            rpc.register("signal.deliver", self._on_deliver)
            rpc.register("signal.terminals", self._on_terminals)

    def push(self, user_ids: Iterable[bytes], notice: Notice, skip: Skip = None) -> None:
        """Push to every live terminal of these users (but ``skip``)."""
        wire_skip = list(skip) if skip else []
        packed: list | None = None
        for owner, users in self._peers.by_owner(set(user_ids)).items():
            if owner == self._peers.self_id or self._peers.rpc is None:
                self._route(users, notice, skip)
            else:
                packed = packed or pack_notice(notice)
                self._peers.notify(owner, "signal.route", users, packed, wire_skip)

    def _on_route(self, users: list, packed: list, skip: list) -> None:
        self._route([bytes(u) for u in users], unpack_notice(packed), _skip(skip))

    def _route(self, users: list[bytes], notice: Notice, skip: Skip) -> None:
        """At the users' owner: on to the nodes holding their terminals."""
        by_node: dict[str, list[bytes]] = {}
        for user_id in users:
            for node in self._routes.nodes_of(user_id):
                by_node.setdefault(node, []).append(user_id)
        for node, here in by_node.items():
            if node == self._peers.self_id:
                self._deliver(here, notice, skip)
            else:
                self._peers.notify(node, "signal.deliver", here, pack_notice(notice), list(skip) if skip else [])

    def _on_deliver(self, users: list, packed: list, skip: list) -> None:
        self._deliver([bytes(u) for u in users], unpack_notice(packed), _skip(skip))

    def _deliver(self, users: list[bytes], notice: Notice, skip: Skip) -> None:
        for user_id in users:
            for terminal in self._registry.terminals(user_id):
                if skip is not None and (user_id, terminal.device_id) == skip:
                    continue
                terminal.link.push_notice(notice)
                self.pushed += 1

    def to_terminals(self, node: str, terminals: list[tuple[bytes, bytes]], notice: Notice) -> None:
        """Push to given terminals (user id, device id) on ``node``."""
        if node == self._peers.self_id or self._peers.rpc is None:
            self._to_terminals_here(terminals, notice)
        else:
            self._peers.notify(node, "signal.terminals", [list(t) for t in terminals], pack_notice(notice))

    def _on_terminals(self, terminals: list, packed: list) -> None:
        self._to_terminals_here(terminals, unpack_notice(packed))

    def _to_terminals_here(self, terminals: list, notice: Notice) -> None:
        for user_id, device_id in terminals:
            terminal = self._registry.find(bytes(user_id), bytes(device_id))
            if terminal is not None:
                terminal.link.push_notice(notice)
                self.pushed += 1


def _skip(raw: list) -> Skip:
    return (bytes(raw[0]), bytes(raw[1])) if raw else None
