"""Routing records at a user's owner, without a network."""

from timpy.cluster.membership import Member, State
from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.errors import Code
from timpy.im.peers import Peers
from timpy.im.routes import Routes
from timpy.im.terminals import LiveTerminal, TerminalRegistry


class Notes:
    """An Rpc stand-in that records notifications (the transport is not under test here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, tuple]] = []
        self.handlers: dict = {}

    def serve(self, op, handler):  # noqa: ANN001, ANN201
        self.handlers[op.name] = handler

    def notify(self, address, op, args):  # noqa: ANN001, ANN201
        self.sent.append((address, op.name, tuple(op.encode_args(args))))


class Link:
    def __init__(self) -> None:
        self.closed: tuple[str, Code] | None = None
        self.pushed: list = []

    def push_nowait(self, delivery) -> bool:  # noqa: ANN001
        self.pushed.append(delivery)
        return True

    async def push(self, delivery) -> None:  # noqa: ANN001
        self.pushed.append(delivery)

    def close(self, reason: str, code: Code) -> None:
        self.closed = (reason, code)


def setup() -> tuple[Routes, Notes, TerminalRegistry, Placement]:
    placement = Placement("me", "10.0.0.1:1", ReplicationConfig())
    placement.update([
        Member("me", "10.0.0.1:1", 0, State.ALIVE, 0.0),
        Member("b", "10.0.0.2:1", 0, State.ALIVE, 0.0),
        Member("c", "10.0.0.3:1", 0, State.SUSPECT, 0.0),
    ])
    notes = Notes()
    registry = TerminalRegistry()
    return Routes(Peers(placement, notes), registry), notes, registry, placement


def test_a_device_on_a_second_node_kicks_the_first():
    routes, notes, registry, _ = setup()
    routes.attach(b"u", b"phone", "b")
    routes.attach(b"u", b"phone", "c")
    assert notes.sent == [("10.0.0.2:1", "route.kick", (b"u", b"phone", "logged in again from the same device elsewhere"))]
    routes.attach(b"u", b"phone", "c")  # the same node again (a ring change): no kick
    assert len(notes.sent) == 1
    link = Link()
    registry.attach(LiveTerminal(b"u", b"phone", "phone", link))
    routes.attach(b"u", b"phone", "me")  # now here: the remote one is told to close
    assert notes.sent[-1] == ("10.0.0.3:1", "route.kick", (b"u", b"phone", "logged in again from the same device elsewhere"))
    routes.attach(b"u", b"phone", "b")  # and from here to b: the local one closes
    assert link.closed is not None and link.closed[1] == Code.KICKED


def test_pushes_go_to_the_nodes_holding_terminals_and_dead_nodes_are_dropped():
    from timpy.wire.messages import ChatMessage, Delivery

    routes, notes, registry, placement = setup()
    routes.attach(b"u", b"phone", "b")
    routes.attach(b"u", b"laptop", "c")
    message = ChatMessage("00" * 16, 1, "id", "x", "u", 0, b"hi", 5)
    routes.push(b"u", Delivery(7, message), b"content", 5)
    assert sorted(a for a, m, _ in notes.sent if m == "push") == ["10.0.0.2:1", "10.0.0.3:1"]
    placement.update([Member("me", "10.0.0.1:1", 0, State.ALIVE, 0.0), Member("b", "10.0.0.2:1", 0, State.ALIVE, 0.0),
                      Member("c", "10.0.0.3:1", 0, State.DEAD, 0.0)])
    routes.keep_only(placement.members)
    assert routes.record_count() == 1
    notes.sent.clear()
    routes.push(b"u", Delivery(8, message), b"content", 5)
    assert [a for a, m, _ in notes.sent] == ["10.0.0.2:1"]


def test_a_skipped_position_asks_for_a_resync_instead_of_delivering_out_of_order():
    from timpy.wire.messages import ChatMessage, Delivery

    link, gaps = Link(), []
    t = LiveTerminal(b"u", b"d", "d", link, on_gap=gaps.append)
    t.begin_sync()
    assert t.finish_sync(3)
    m = ChatMessage("00" * 16, 1, "id", "x", "u", 0, b"hi", 5)
    t.deliver(Delivery(4, m))
    t.deliver(Delivery(4, m))  # a duplicate is dropped
    t.deliver(Delivery(6, m))  # 5 was lost on the way
    assert [d.pos for d in link.pushed] == [4] and gaps == [t] and t.syncing
