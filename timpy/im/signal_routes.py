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

from timpy.cluster import catalog as ops
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
        peers.serve(ops.SIGNAL_ROUTE, self._route)
        peers.serve(ops.SIGNAL_DELIVER, self._deliver)
        peers.serve(ops.SIGNAL_TERMINALS, self._on_terminals)

    def push(self, user_ids: Iterable[bytes], notice: Notice, skip: Skip = None) -> None:
        """Push to every live terminal of these users (but ``skip``)."""
        packed = pack_notice(notice)  # once, whatever the number of owners
        for owner, users in self._peers.by_owner(set(user_ids)).items():
            self._peers.notify(owner, ops.SIGNAL_ROUTE, ops.SignalRoute(users, packed, skip))

    def _route(self, a: ops.SignalRoute) -> None:
        """At the users' owner: on to the nodes holding their terminals (the notice as it came)."""
        by_node: dict[str, list[bytes]] = {}
        for user_id in a.users:
            for node in self._routes.nodes_of(user_id):
                by_node.setdefault(node, []).append(user_id)
        for node, here in by_node.items():
            self._peers.notify(node, ops.SIGNAL_DELIVER, ops.SignalRoute(here, a.notice, a.skip))

    def _deliver(self, a: ops.SignalRoute) -> None:
        notice = unpack_notice(a.notice)
        for user_id in a.users:
            for terminal in self._registry.terminals(user_id):
                if a.skip is not None and (user_id, terminal.device_id) == a.skip:
                    continue
                terminal.link.push_notice(notice)
                self.pushed += 1

    def to_terminals(self, node: str, terminals: list[tuple[bytes, bytes]], notice: Notice) -> None:
        """Push to given terminals (user id, device id) on ``node``."""
        self._peers.notify(node, ops.SIGNAL_TERMINALS, ops.SignalTerminals(terminals, pack_notice(notice)))

    def _on_terminals(self, a: ops.SignalTerminals) -> None:
        notice = unpack_notice(a.notice)
        for user_id, device_id in a.terminals:
            terminal = self._registry.find(user_id, device_id)
            if terminal is not None:
                terminal.link.push_notice(notice)
                self.pushed += 1
