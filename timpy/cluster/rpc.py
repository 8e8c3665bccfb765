"""Requests between nodes over the peer transport.

A request is ``[REQUEST, rid, reply_to, method, args]`` and its reply
``[REPLY, rid, code, result]`` (code 0) or ``[REPLY, rid, code, text]``
(``[REPLY, rid, code, text, NOT_OWNER]`` when the node asked does not own the
key: the caller may retry once its ring has moved); a request with rid 0 is a
notification and gets no reply. ``method`` is an operation's number in the
catalog (``timpy.cluster.catalog``), whose codec packs ``args`` and the
result and checks them on arrival; any other method is refused as unknown.
Both travel in the same encrypted, authenticated channels as membership
messages.

Handlers are plain functions called in arrival order, so a handler that
queues work (the writer's queue, say) keeps the order in which one peer sent
the requests. A handler that has to wait returns a coroutine; the RPC layer
awaits it in its own task and sends the reply. The transport may drop a
frame, so every call has a timeout and callers treat a timeout as "unknown
outcome": the operations they call are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgpack
import trio

from timpy.cluster.catalog import MalformedFrame, Op, lookup
from timpy.errors import Code, TimpyError

log = logging.getLogger("timpy.cluster")

A = TypeVar("A")
R = TypeVar("R")

REQUEST = 10
REPLY = 11
DEFAULT_TIMEOUT = 5.0
MAX_HANDLER_TASKS = 4096
NOT_OWNER = 1  # the fifth element of a refusal from a node that does not own the key

Handler = Callable[[Any], Any]


class _Sender(Protocol):
    address: str

    def send(self, address: str, payload: bytes) -> None: ...


# What the node asked holds, by the first part of a method's name: errors that
# reach users name that, never the internal operation.
_HOLDS = {
    "acct": "the account", "term": "the account", "token": "the account", "route": "the account",
    "conv": "the conversation", "inbox": "the recipient's inbox", "receipt": "the conversation",
    "group": "the group", "presence": "the user's presence", "roster": "the contact list",
    "room": "the room", "signal": "the recipient", "copies": "a copy of the data",
    "backend": "the storage map", "cluster": "the cluster status", "admin": "part of the cluster",
    "files": "the file", "repair": "a copy of the data", "convs": "the conversation list",
    "thread": "the conversation", "search": "the conversation", "push": "the account",
}


def holds(method: str) -> str:
    """What a node asked with ``method`` holds, in words a user knows."""
    return _HOLDS.get(method.partition(".")[0], "part of the data")


class PeerUnavailable(TimpyError):
    """The peer did not answer in time; the outcome of the request is unknown.

    The text is for users ("the node that holds the account did not answer
    within 5 s; try again in a few seconds"); ``method`` and ``address`` are
    for logs."""

    code = Code.UNAVAILABLE

    def __init__(self, address: str, method: str, timeout: float) -> None:
        super().__init__(
            f"the node that holds {holds(method)} did not answer within {timeout:g} s "
            "(it may have just stopped); try again in a few seconds"
        )
        self.address, self.method, self.timeout = address, method, timeout


class NotOwner(TimpyError):
    """The node asked does not own the key (any more): the ring is changing.
    The one refusal of every operation served at a key's owner; it crosses
    the wire as itself, so the caller can retry once its ring has moved."""

    code = Code.UNAVAILABLE

    @classmethod
    def of(cls, what: str) -> NotOwner:
        return cls(f"this node does not own that {what} (the cluster is changing); retry")


class UnreadableReply(TimpyError):
    """An answer that does not match the operation's declared result."""

    code = Code.INTERNAL


GIVE_UP_CHECK = 0.2  # seconds between checks of a call's give_up while it waits


class Call:
    """A request on its way; ``result`` waits for the answer."""

    def __init__(self, rpc: Rpc, rid: int, address: str, op: Op[Any, Any]) -> None:
        self._rpc, self._rid, self.address = rpc, rid, address
        self.op = op
        self.method = op.name
        self._event = trio.Event()
        self._box: list[Any] = []
        self._then: Callable[[Call], None] | None = None

    async def result(
        self, timeout: float = DEFAULT_TIMEOUT, give_up: Callable[[], str | None] | None = None
    ) -> Any:
        """Wait for the answer, at most ``timeout``. ``give_up`` is asked
        every ``GIVE_UP_CHECK`` s while waiting: a text from it ends the wait
        at once with UNAVAILABLE and that text (a node that lost its majority
        stops waiting on peers it cannot reach)."""
        deadline = trio.current_time() + timeout
        try:
            while not self._event.is_set():
                left = deadline - trio.current_time()
                if left <= 0:
                    break
                with trio.move_on_after(left if give_up is None else min(left, GIVE_UP_CHECK)):
                    await self._event.wait()
                if give_up is not None and not self._event.is_set():
                    reason = give_up()
                    if reason:
                        raise TimpyError(reason, Code.UNAVAILABLE)
        finally:
            self._rpc._waiting.pop(self._rid, None)
        return self.outcome(timeout)

    def then(self, callback: Callable[[Call], None]) -> None:
        """Call ``callback(self)`` once the answer arrives (in the task that
        reads it: no task of its own); ``outcome`` then reads it. The call
        waits for its answer until ``forget``."""
        self._then = callback

    def answered(self) -> bool:
        return bool(self._box)

    def forget(self) -> None:
        """Stop waiting for the answer (a ``then`` caller is done with it)."""
        self._rpc._waiting.pop(self._rid, None)

    def outcome(self, timeout: float) -> Any:
        """The answer: its decoded result, or the error it carries (PeerUnavailable when none came)."""
        if not self._box:
            log.info("node %s did not answer %s within %g s", self.address, self.method, timeout)
            raise PeerUnavailable(self.address, self.method, timeout)
        code, result, flag = self._box
        if code:
            if flag == NOT_OWNER:
                raise NotOwner(str(result))
            raise TimpyError(str(result), Code(code) if code in Code._value2member_map_ else Code.INTERNAL)
        try:
            return self.op.decode_result(result)
        except MalformedFrame as exc:
            log.warning("node %s answered unreadably: %s", self.address, exc)
            raise UnreadableReply(
                "another node of the cluster answered in a form this node cannot read; "
                "the nodes may run different versions of timpy"
            ) from None


def is_rpc(raw: Any) -> bool:
    return isinstance(raw, list) and bool(raw) and raw[0] in (REQUEST, REPLY)


class Rpc:
    def __init__(self, transport: _Sender) -> None:
        self._transport = transport
        self._handlers: dict[int, tuple[Op[Any, Any], Handler]] = {}
        self._waiting: dict[int, Call] = {}
        self._next_rid = 1
        self._nursery: trio.Nursery | None = None  # where handlers that wait run, once ``run`` started
        self._early: list[tuple[list[Any], Awaitable[Any], Op[Any, Any]]] = []  # those that came before
        self._stopped = False
        self._running = 0
        self.bad_frames = 0

    def serves(self, op: Op[Any, Any]) -> bool:
        """Whether this node answers catalog operation ``op``."""
        return op.number in self._handlers

    def serve(self, op: Op[Any, Any], handler: Handler) -> None:
        """Serve a catalog operation: ``handler(args)`` gets its checked
        argument dataclass and returns its result (or a coroutine of it)."""
        self._handlers[op.number] = (op, handler)

    def handler(self, op: Op[Any, Any]) -> Handler | None:
        """What serves ``op`` here now (a test wraps it to make this node refuse for a while)."""
        served = self._handlers.get(op.number)
        return served[1] if served is not None else None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the handlers that wait, each in its own task, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await trio.lowlevel.checkpoint_if_cancelled()  # stopped at once: what came early is closed below
                early, self._early = self._early, []
                for job in early:
                    nursery.start_soon(self._run_job, *job)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stopped = True
            self._nursery = None
            for _raw, pending, _op in self._early:
                _close(pending)
            self._early.clear()

    async def _run_job(self, raw: list[Any], pending: Awaitable[Any], op: Op[Any, Any]) -> None:
        self._running += 1
        try:
            await self._finish(raw, pending, op)
        finally:
            self._running -= 1

    # --- calling ------------------------------------------------------------

    async def call(self, address: str, op: Op[A, R], args: A, timeout: float | None = None) -> R:
        """Ask the node at ``address`` to run ``op`` with its argument
        dataclass; its ``TimpyError`` is raised here as itself. Waits the
        operation's declared timeout unless told otherwise."""
        return await self.start_call(address, op, args).result(op.timeout if timeout is None else timeout)

    def start_call(self, address: str, op: Op[A, R], args: A) -> Call:
        """Send a request now (so requests leave in the order they are
        started) and return a handle to await its answer later."""
        rid = self._next_rid
        self._next_rid += 1
        call = Call(self, rid, address, op)
        self._waiting[rid] = call
        self._transport.send(address, _pack([REQUEST, rid, self._transport.address, op.number, op.encode_args(args)]))
        return call

    def notify(self, address: str, op: Op[A, None], args: A) -> None:
        """Send without waiting for an answer (best effort)."""
        self._transport.send(address, _pack([REQUEST, 0, self._transport.address, op.number, op.encode_args(args)]))

    # --- receiving ----------------------------------------------------------

    def receive(self, raw: list[Any]) -> None:
        """A decoded request or reply from the transport."""
        try:
            if raw[0] == REPLY:
                _, rid, code, result, *flag = raw
                waiting = self._waiting.get(rid)
                if waiting is not None and not waiting._box:
                    waiting._box.extend((int(code), result, flag[0] if flag else 0))
                    waiting._event.set()
                    if waiting._then is not None:
                        waiting._then(waiting)
                return
            _, rid, reply_to, method, args = raw
            op, handler = self._handlers.get(method, (None, None)) if type(method) is int else (None, None)
            if op is None or handler is None:
                known = lookup(method) if isinstance(method, (str, int)) else None
                log.warning("a peer asked for the unknown cluster method %r%s", method,
                            f" ({known.name}: not served here)" if known is not None else "")
                raise TimpyError("a node of the cluster runs another version of timpy that does not know this "
                                 "request; upgrade the nodes to one version", Code.UNKNOWN_OPERATION)
            if self._running >= MAX_HANDLER_TASKS:
                raise TimpyError("this node is overloaded; retry", Code.UNAVAILABLE)
            try:
                decoded = op.decode_args(args)
            except MalformedFrame as exc:
                self.bad_frames += 1
                log.warning("refused a malformed cluster request: %s", exc)
                raise TimpyError("a node of the cluster sent a request this node cannot read; "
                                 "the nodes may run different versions of timpy", Code.BAD_REQUEST) from None
            result = handler(decoded)
        except NotOwner as exc:
            self._answer(raw, exc.code, exc.text, NOT_OWNER)
            return
        except TimpyError as exc:
            self._answer(raw, exc.code, exc.text)
            return
        except Exception as exc:
            self.bad_frames += 1
            log.exception("cluster request failed: %s", type(exc).__name__)
            self._answer(raw, Code.INTERNAL, "internal error on another node of the cluster; it was logged there")
            return
        if hasattr(result, "__await__"):
            if self._stopped:
                # The node is shutting down: the handler never runs; it is closed, not left to the
                # garbage collector (which warns of coroutines never awaited).
                _close(result)
                self._answer(raw, Code.UNAVAILABLE, "this node is shutting down; retry on another node")
            elif self._nursery is None:
                self._early.append((raw, result, op))
            else:
                self._nursery.start_soon(self._run_job, raw, result, op)
        else:
            self._answer(raw, 0, op.encode_result(result))

    async def _finish(self, raw: list[Any], pending: Awaitable[Any], op: Op[Any, Any]) -> None:
        try:
            result = op.encode_result(await pending)
        except NotOwner as exc:
            self._answer(raw, exc.code, exc.text, NOT_OWNER)
            return
        except TimpyError as exc:
            self._answer(raw, exc.code, exc.text)
            return
        except Exception:
            log.exception("cluster request %r failed", raw[3] if len(raw) > 3 else "?")
            self._answer(raw, Code.INTERNAL, "internal error on another node of the cluster; it was logged there")
            return
        self._answer(raw, 0, result)

    def _answer(self, raw: list[Any], code: int, result: Any, flag: int = 0) -> None:
        if not isinstance(raw, list) or len(raw) != 5 or raw[0] != REQUEST or not raw[1]:
            return  # a notification, or too malformed to answer
        try:
            reply = [REPLY, raw[1], int(code), result, flag] if flag else [REPLY, raw[1], int(code), result]
            self._transport.send(str(raw[2]), _pack(reply))
        except Exception:  # pragma: no cover - unpackable result is a bug in a handler
            log.exception("could not send the reply to %r", raw[3])


def _close(pending: Awaitable[Any]) -> None:
    close = getattr(pending, "close", None)
    if close is not None:
        close()


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)
