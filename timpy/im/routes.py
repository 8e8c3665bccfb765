"""Routing records: at a user's owner, which nodes hold the user's live
terminals, so a delivery goes straight to them.

A gateway node records each terminal with the user's owner when it logs in
and again whenever the ring changes (the owner may be new); a dead node's
records are dropped. One device logged in on two nodes: the older one is told
to close (``route.kick``).
"""

from __future__ import annotations

from timpy.errors import Code
from timpy.im.messages import Delivery, unpack_content
from timpy.im.peers import Peers
from timpy.im.terminals import TerminalRegistry


class Routes:
    def __init__(self, peers: Peers, registry: TerminalRegistry) -> None:
        self._peers = peers
        self._registry = registry
        self._records: dict[bytes, dict[bytes, str]] = {}
        rpc = peers.rpc
        if rpc is not None:
            rpc.register("route.detach", self._on_detach)
            rpc.register("route.kick", self._on_kick)
            rpc.register("route.kick_user", self._on_kick_user)
            rpc.register("push", self._on_push)

    # --- at the owner -------------------------------------------------------

    def attach(self, user_id: bytes, device_id: bytes, node_id: str) -> None:
        devices = self._records.setdefault(user_id, {})
        old = devices.get(device_id)
        devices[device_id] = node_id
        if old is not None and old != node_id:
            if old == self._peers.self_id:
                self._kick_local(user_id, device_id)
            else:
                self._peers.notify(old, "route.kick", user_id, device_id)

    def _on_detach(self, user_id: bytes, device_id: bytes, node_id: str) -> None:
        devices = self._records.get(user_id)
        if devices is not None and devices.get(device_id) == node_id:
            del devices[device_id]
            if not devices:
                del self._records[user_id]

    def detach(self, user_id: bytes, device_id: bytes) -> None:
        """A terminal on this node went away: tell the user's owner."""
        owner = self._peers.owner(user_id)
        if owner == self._peers.self_id or self._peers.rpc is None:
            self._on_detach(user_id, device_id, self._peers.self_id)
        else:
            self._peers.notify(owner, "route.detach", user_id, device_id, self._peers.self_id)

    def keep_only(self, nodes: frozenset[str]) -> None:
        """Drop the records of nodes that left the ring (dead or gone)."""
        for user_id in list(self._records):
            devices = self._records[user_id]
            for device_id, node in list(devices.items()):
                if node not in nodes:
                    del devices[device_id]
            if not devices:
                del self._records[user_id]

    def push(self, user_id: bytes, delivery: Delivery, content: bytes, created_ms: int) -> None:
        """Deliver to the user's terminals here and on the nodes that hold others."""
        self._registry.deliver(user_id, delivery)
        nodes = {n for n in self._records.get(user_id, {}).values() if n != self._peers.self_id}
        if not nodes:
            return
        m = delivery.message
        wire = [user_id, delivery.pos, m.conversation, m.seq, created_ms, content]
        for node in nodes:
            self._peers.notify(node, "push", *wire)

    def kick_user(self, user_id: bytes, reason: str) -> None:
        """Close every terminal of the user, wherever it is (the operator's kick)."""
        owner = self._peers.owner(user_id)
        if owner != self._peers.self_id and self._peers.rpc is not None:
            self._peers.notify(owner, "route.kick_user", user_id, reason)
            return
        self._on_kick_user(user_id, reason)

    def _on_kick_user(self, user_id: bytes, reason: str) -> None:
        user_id, reason = bytes(user_id), str(reason)
        self._kick_all_local(user_id, reason)
        for node in set(self._records.get(user_id, {}).values()) - {self._peers.self_id}:
            self._peers.notify(node, "route.kick", user_id, b"", reason)

    def _kick_all_local(self, user_id: bytes, reason: str) -> None:
        for terminal in list(self._registry.terminals(user_id)):
            self._registry.detach(terminal)
            terminal.link.close(reason, Code.KICKED)

    def record_count(self) -> int:
        return sum(len(d) for d in self._records.values())

    # --- at a gateway node ----------------------------------------------------

    def _on_push(self, user_id: bytes, pos: int, conversation: str, seq: int, created_ms: int, content: bytes) -> None:
        message = unpack_content(str(conversation), int(seq), int(created_ms), bytes(content))
        self._registry.deliver(bytes(user_id), Delivery(int(pos), message))

    def _on_kick(self, user_id: bytes, device_id: bytes, reason: str = "") -> None:
        if not device_id:  # every terminal of the user on this node
            self._kick_all_local(bytes(user_id), str(reason) or "closed by the operator")
            return
        self._kick_local(bytes(user_id), bytes(device_id))

    def _kick_local(self, user_id: bytes, device_id: bytes) -> None:
        terminal = self._registry.find(user_id, device_id)
        if terminal is not None:
            self._registry.detach(terminal)
            terminal.link.close("logged in again from the same device elsewhere", Code.KICKED)
