"""The catalog of node-to-node operations: every request one node makes of
another, declared once.

Each ``Op`` has a name (for logs and for the words users see, by its first
part: ``timpy.cluster.rpc.holds``), a number (what travels on the wire), a
frozen dataclass of arguments and a result type, the key that picks the
node that answers it (``KeyOwner``) or ``ANY_NODE``/``THIS_NODE``, and the
properties the framework (``timpy.im.peers.Peers``) carries out around the
handler at the owner: catch-up before it, replication after it, one at a
time per key.

The codec packs the arguments as a msgpack positional array in field order
(2.4x faster than maps, ../shared/PERFORMANCE-NOTES.md) and checks every
field's type when it unpacks one, so a malformed frame is refused with
``MalformedFrame`` naming the operation, the field and what was wrong, and
no handler ever sees it.

As in memberlist's ``net.go``: ONLY APPEND TO THE TABLE. The numbers, and
the field order of each dataclass, are part of the node-to-node protocol;
``tests/cluster/test_catalog.py`` pins them. Nodes of one version talk to
each other; a retired operation keeps its number (never reused).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from timpy.cluster.ownership import Epoch
from timpy.wire.messages import SendResult, Signal, pack_send_result, unpack_send_result

A = TypeVar("A")
R = TypeVar("R")


class MalformedFrame(ValueError):
    """A request or reply whose arguments do not match the operation's declaration.

    ``path`` says where (".user_id", "[2]", ...), built on the way out of the
    decoders, so a frame that is well formed costs no text at all."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path

    def within(self, step: str) -> MalformedFrame:
        self.path = step + self.path
        return self

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# --- who answers --------------------------------------------------------------------


@dataclass(frozen=True)
class KeyOwner:
    """The operation runs at the owner of the key in the argument ``field``.

    ``what`` names the key in the refusal a non-owner gives ("this node does
    not own that user ..."); ``space`` is the key's kind for catch-up and
    replication ("user" or "conv"; None for keys that hold nothing stored,
    such as rooms)."""

    field: str
    what: str
    space: Literal["user", "conv"] | None = None


ANY_NODE = "any node"  # every node can answer (the caller picks one)
THIS_NODE = "this node"  # the node the caller addresses answers about itself (its terminals, lease, status)

Owner = KeyOwner | Literal["any node", "this node"]


# --- codecs ------------------------------------------------------------------------------

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _exact(tp: type) -> Decode:
    def decode(value: Any) -> Any:
        if type(value) is not tp:
            raise MalformedFrame(f"expected {tp.__name__}, got {_kind(value)}")
        return value

    return decode


def _float(value: Any) -> float:
    if type(value) not in (int, float):
        raise MalformedFrame(f"expected a number, got {_kind(value)}")
    return float(value)


def _none(value: Any) -> None:
    if value is not None:
        raise MalformedFrame(f"expected nil, got {_kind(value)}")


_EXACT = (bytes, str, int, bool)
_PRIMITIVE: dict[Any, Decode] = {
    **{tp: _exact(tp) for tp in _EXACT}, float: _float, type(None): _none, None: _none,
}


def codec_of(tp: Any) -> tuple[Encode, Decode]:
    """The (encode, decode) pair of a type: bytes, str, int, float, bool,
    None, ``X | None``, list, tuple, frozenset, dict, dataclasses, Any.
    ``decode`` raises ``MalformedFrame`` for a value of another shape."""
    if tp is Any:
        return _same, _same
    if tp in _PRIMITIVE:
        return _same, _PRIMITIVE[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) != len(typing.get_args(tp)) - 1 or len(options) != 1:
            raise TypeError(f"only X | None unions are supported, not {tp}")
        enc, dec = codec_of(options[0])
        return (
            (lambda v: None if v is None else enc(v)) if enc is not _same else _same,
            lambda value: None if value is None else dec(value),
        )
    if origin in (list, tuple, frozenset):
        args = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return _fixed_tuple(args)
        enc, dec = codec_of(args[0])
        make = {list: list, tuple: tuple, frozenset: frozenset}[origin]
        exact = args[0] if args[0] in _EXACT else None

        def decode_seq(value: Any) -> Any:
            if type(value) is not list:
                raise MalformedFrame(f"expected an array, got {_kind(value)}")
            if exact is not None and all(type(v) is exact for v in value):
                return value if make is list else make(value)
            i = 0
            try:
                out = []
                for i, v in enumerate(value):  # noqa: B007 - i names the element that failed
                    out.append(dec(v))
            except MalformedFrame as exc:
                raise exc.within(f"[{i}]") from None
            return out if make is list else make(out)

        if origin is frozenset:
            return (lambda v: sorted(enc(x) for x in v)), decode_seq
        return ((lambda v: [enc(x) for x in v]) if enc is not _same else _same), decode_seq
    if origin is dict:
        kt, vt = typing.get_args(tp)
        kenc, kdec = codec_of(kt)
        venc, vdec = codec_of(vt)

        def decode_map(value: Any) -> dict:
            if type(value) is not dict:
                raise MalformedFrame(f"expected a map, got {_kind(value)}")
            k: Any = None
            try:
                out = {}
                for k, v in value.items():
                    out[kdec(k)] = vdec(v)
            except MalformedFrame as exc:
                raise exc.within(f"[{k!r}]") from None
            return out

        if kenc is _same and venc is _same:
            return _same, decode_map
        return (lambda v: {kenc(k): venc(x) for k, x in v.items()}), decode_map
    if tp is Epoch:
        return _epoch_codec()
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_codec(tp)
    raise TypeError(f"no node-to-node codec for {tp!r}")


def _frozen(x: Any) -> Any:
    """A decoded value as a hashable key: lists (nested ones too) as tuples."""
    return tuple(_frozen(y) for y in x) if type(x) is list else x


EPOCH_FIELDS_BEFORE_GONE = 5  # an epoch without ``gone`` travels without it
EPOCHS_KEPT = 64  # distinct ring epochs whose wire form is kept (a cluster has one or two in use)


@functools.cache  # one pair for every operation: an epoch decoded in any of them is the same object
def _epoch_codec() -> tuple[Encode, Decode]:
    """An epoch as any dataclass travels, but each distinct one encoded and
    decoded once: every lease request and answer carries one (N nodes ask N
    voters every 0.4 s), and sorting and rebuilding its member sets each time
    was most of a large cluster's lease traffic. A decoded epoch is the same
    object as the last one decoded with equal fields, so the ownership core
    compares it by identity."""
    encode_fields, decode_fields = _dataclass_codec(Epoch)
    encoded: dict[Epoch, list] = {}
    decoded: dict[tuple, Epoch] = {}

    def encode(e: Epoch) -> list:
        raw = encoded.get(e)
        if raw is None:
            if len(encoded) >= EPOCHS_KEPT:
                encoded.clear()
            raw = encoded[e] = encode_fields(e)
            if not e.gone:  # in the form nodes from before ``gone`` read (and send)
                raw = encoded[e] = raw[:EPOCH_FIELDS_BEFORE_GONE]
        return raw

    def decode(value: Any) -> Epoch:
        if type(value) is list and len(value) == EPOCH_FIELDS_BEFORE_GONE:
            value = [*value, []]
        key: tuple | None = None
        if type(value) is list and value and type(value[0]) is int:  # (True == 1: a bool number is no key)
            try:
                key = tuple(_frozen(x) for x in value)
                found = decoded.get(key)
            except TypeError:  # not hashable: a malformed frame, which the decoder below names
                key = found = None
            if found is not None:
                return found
        e = decode_fields(value)
        if key is not None:
            if len(decoded) >= EPOCHS_KEPT:
                decoded.clear()
            decoded[key] = e
        return e

    return encode, decode


def _fixed_tuple(args: tuple) -> tuple[Encode, Decode]:
    parts = [codec_of(a) for a in args]

    def encode(v: Any) -> list:
        return [enc(x) for (enc, _), x in zip(parts, v, strict=True)]

    def decode(value: Any) -> tuple:
        if type(value) is not list or len(value) != len(parts):
            raise MalformedFrame(f"expected an array of {len(parts)}, got {_kind(value)}")
        i = 0
        try:
            out = []
            for i, ((_, dec), x) in enumerate(zip(parts, value, strict=True)):  # noqa: B007
                out.append(dec(x))
        except MalformedFrame as exc:
            raise exc.within(f"[{i}]") from None
        return tuple(out)

    return encode, decode


def _dataclass_codec(cls: type) -> tuple[Encode, Decode]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    parts = [codec_of(hints[n]) for n in names]
    encoders = [enc for enc, _ in parts]
    decoders = [dec for _, dec in parts]
    plain = all(enc is _same for enc in encoders)
    # Fields whose wire value is the value itself (bytes, str, int, bool):
    # a frame whose types are exactly these is taken as it is.
    exact = tuple(hints[n] if hints[n] in _EXACT else None for n in names)
    all_exact = None not in exact
    n_fields = len(names)

    def encode(v: Any) -> list:
        if plain:
            return [getattr(v, n) for n in names]
        return [enc(getattr(v, n)) for n, enc in zip(names, encoders, strict=True)]

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise MalformedFrame(f"expected an array of {n_fields} fields, got {_kind(value)}")
        if len(value) != n_fields:
            raise MalformedFrame(f"expected {n_fields} fields ({', '.join(names)}), got {len(value)}")
        if all_exact and tuple(map(type, value)) == exact:
            return cls(*value)
        i = 0
        try:
            out = []
            for i, (x, t, dec) in enumerate(zip(value, exact, decoders, strict=True)):  # noqa: B007
                out.append(x if t is not None and type(x) is t else dec(x))
        except MalformedFrame as exc:
            raise exc.within(f".{names[i]}") from None
        return cls(*out)

    return encode, decode


# --- operations ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Op(Generic[A, R]):
    """One node-to-node operation (see the module docstring)."""

    number: int
    name: str
    args: type[A]
    result: Any  # a type codec_of knows; None: the handler returns nothing
    owner: Owner
    timeout: float = 5.0  # seconds a caller waits for the answer
    reply: bool = True  # False: a notification, sent and forgotten (no answer, no retry)
    catch_up: bool = False  # at the owner, pull the key's replicas (once per ring version) before the handler
    replicate: bool = False  # at the owner, copy what the handler wrote to the key's replicas before answering
    serialize: bool = False  # at the owner, one call per key at a time (catch-up, handler and replication)
    _codec: tuple[Encode, Decode, Encode, Decode] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (dataclasses.is_dataclass(self.args) and isinstance(self.args, type)):
            raise TypeError(f"{self.name}: the arguments are a dataclass")
        arg_enc, arg_dec = _dataclass_codec(self.args)
        res_enc, res_dec = codec_of(self.result)
        object.__setattr__(self, "_codec", (arg_enc, arg_dec, res_enc, res_dec))
        names = {f.name for f in dataclasses.fields(self.args)}
        if isinstance(self.owner, KeyOwner):
            if self.owner.field not in names:
                raise TypeError(f"{self.name}: its key field {self.owner.field!r} is not an argument")
        elif self.catch_up or self.replicate or self.serialize:
            raise TypeError(f"{self.name}: catch-up, replication and serializing need a key")
        if (self.catch_up or self.replicate) and isinstance(self.owner, KeyOwner) and self.owner.space is None:
            raise TypeError(f"{self.name}: catch-up and replication need the key's space (user or conv)")
        if not self.reply and self.result is not None:
            raise TypeError(f"{self.name}: a notification has no result")

    def key(self, args: A) -> bytes:
        """The key that picks the owner (``KeyOwner`` operations only)."""
        assert isinstance(self.owner, KeyOwner), f"{self.name} is not owned by a key"
        return getattr(args, self.owner.field)

    def encode_args(self, args: A) -> list:
        if type(args) is not self.args:
            raise TypeError(f"{self.name} takes {self.args.__name__}, not {type(args).__name__}")
        return self._codec[0](args)

    def decode_args(self, raw: Any) -> A:
        """The arguments of a request from another node; ``MalformedFrame`` when they are not these."""
        try:
            return self._codec[1](raw)
        except MalformedFrame as exc:
            raise exc.within(self.name) from None

    def encode_result(self, result: R) -> Any:
        return self._codec[2](result)

    def decode_result(self, raw: Any) -> R:
        """The answer from another node; ``MalformedFrame`` when it is not this operation's result."""
        try:
            return self._codec[3](raw)
        except MalformedFrame as exc:
            raise exc.within(f"{self.name} result") from None

    def __repr__(self) -> str:
        return f"Op({self.number}, {self.name!r})"


OPS: dict[int, Op[Any, Any]] = {}
BY_NAME: dict[str, Op[Any, Any]] = {}


def op(number: int, name: str, args: type[A], result: Any, owner: Owner, **props: Any) -> Op[A, R]:
    """Declare an operation (append only: never change or reuse a number)."""
    if number in OPS:
        raise ValueError(f"operation number {number} is {OPS[number].name} already")
    if name in BY_NAME:
        raise ValueError(f"operation {name} is declared twice")
    declared: Op[A, R] = Op(number, name, args, result, owner, **props)
    OPS[number] = BY_NAME[name] = declared
    return declared


def lookup(method: str | int) -> Op[Any, Any] | None:
    return OPS.get(method) if isinstance(method, int) else BY_NAME.get(method)


_USER = KeyOwner("user_id", "user", "user")
_CONV = KeyOwner("conv_id", "conversation", "conv")
_PAIR = KeyOwner("pair", "conversation", "conv")
_GROUP = KeyOwner("group_id", "group", "conv")
_ROOM = KeyOwner("room_key", "room")


# --- accounts (timpy/im/accounts.py) ----------------------------------------------------------

@dataclass(frozen=True)
class AccountCreate:
    user_id: bytes
    secret: bytes  # the password hash
    profile: bytes  # packed {name, created}


@dataclass(frozen=True)
class AccountGet:
    user_id: bytes
    full: bool  # with the profile


@dataclass(frozen=True)
class Account:
    secret: bytes
    disabled: bool
    profile: bytes  # empty unless asked for in full
    version: int


@dataclass(frozen=True)
class AccountUpdate:
    user_id: bytes
    secret: bytes | None  # None: unchanged
    disabled: bool | None  # None: unchanged


@dataclass(frozen=True)
class ProfileChange:
    user_id: bytes
    changes: dict[str, str]


@dataclass(frozen=True)
class TokenRevoke:
    token_id: bytes
    expires_ms: int


ACCT_CREATE = op(1, "acct.create", AccountCreate, None, _USER, catch_up=True, replicate=True)
ACCT_GET = op(2, "acct.get", AccountGet, Account | None, _USER, catch_up=True)
ACCT_UPDATE = op(3, "acct.update", AccountUpdate, bool, _USER, catch_up=True, replicate=True)
ACCT_PROFILE = op(4, "acct.profile", ProfileChange, bool, _USER, catch_up=True, replicate=True, serialize=True)
TOKEN_REVOKE = op(5, "token.revoke", TokenRevoke, None, THIS_NODE, reply=False)


# --- groups (timpy/im/groups.py) ---------------------------------------------------------------

@dataclass(frozen=True)
class GroupRequest:
    group_id: bytes
    actor: str
    op: str
    users: list[str]
    name: str
    policy: str
    flag: bool
    profile: dict[str, str]


@dataclass(frozen=True)
class GroupInspect:
    group_id: bytes


@dataclass(frozen=True)
class GroupSend:
    group_id: bytes
    sender_id: bytes
    sender: str
    client_id: str
    kind: int
    body: bytes
    ext: dict[str, str]


@dataclass(frozen=True)
class GroupSystemSend:
    group_id: bytes
    system_id: bytes
    client_id: str
    body: bytes


@dataclass(frozen=True)
class Sent:
    """A stored message as its sender hears of it."""

    seq: int
    created_ms: int
    duplicate: bool
    content: bytes  # the packed content (timpy.wire.messages.pack_content)

    @classmethod
    def of(cls, result: SendResult) -> Sent:
        return cls(*pack_send_result(result))

    def result(self, conversation: str) -> SendResult:
        return unpack_send_result(conversation, [self.seq, self.created_ms, self.duplicate, self.content])


GROUP_REQUEST = op(6, "group.request", GroupRequest, dict[str, Any], _GROUP, timeout=10.0,
                   catch_up=True, replicate=True, serialize=True)
GROUP_SEND = op(7, "group.send", GroupSend, Sent, _GROUP, timeout=15.0, catch_up=True)
GROUP_INSPECT = op(8, "group.inspect", GroupInspect, dict[str, Any], _GROUP, catch_up=True)
GROUP_SYSTEM_SEND = op(9, "group.system_send", GroupSystemSend, Sent, _GROUP, timeout=15.0, catch_up=True)


# --- presence (timpy/im/presence.py) -----------------------------------------------------------

@dataclass(frozen=True)
class PresenceSet:
    user_id: bytes
    name: str
    status: str
    text: str
    invisible: bool


@dataclass(frozen=True)
class PresenceGet:
    user_id: bytes  # the first of user_ids: picks the owner
    user_ids: list[bytes]  # all owned by the same node
    names: list[str]
    asker: bytes
    subscribe: bool
    unsubscribe: bool


PRESENCE_SET = op(10, "presence.set", PresenceSet, None, _USER)
PRESENCE_GET = op(11, "presence.get", PresenceGet, list[dict[str, Any]], _USER)


# --- receipts (timpy/im/receipts.py) -----------------------------------------------------------

@dataclass(frozen=True)
class ReceiptConv:
    conv_id: bytes
    user_id: bytes
    name: str
    device_id: bytes
    seq: int
    read: bool


@dataclass(frozen=True)
class ReadMark:
    user_id: bytes
    conv_id: bytes
    seq: int


@dataclass(frozen=True)
class MarkOf:
    user_id: bytes
    conv_id: bytes


@dataclass(frozen=True)
class UnreadOf:
    user_id: bytes
    name: str


@dataclass(frozen=True)
class Unread:
    counts: dict[str, int]  # conversation -> unread messages
    marks: dict[str, int]  # conversation -> read mark


_READER = KeyOwner("user_id", "user", "user")

RECEIPT_CONV = op(12, "receipt.conv", ReceiptConv, None, _CONV, timeout=15.0, catch_up=True)
RECEIPT_MARK = op(13, "receipt.mark", ReadMark, int, _READER, catch_up=True, replicate=True)
RECEIPT_GET_MARK = op(14, "receipt.get_mark", MarkOf, int, _READER, catch_up=True)
RECEIPT_UNREAD = op(15, "receipt.unread", UnreadOf, Unread, _READER, catch_up=True)


# --- roster (timpy/im/roster.py) ---------------------------------------------------------------

@dataclass(frozen=True)
class RosterOp:
    pair: bytes  # the two users' 1:1 conversation
    actor: str
    actor_id: bytes
    op: str
    peer: str
    peer_id: bytes


@dataclass(frozen=True)
class RosterMirror:
    user_id: bytes
    user: str
    peer: str
    category: str | None  # None: no relation any more
    count: int  # the pair record's counter: a late mirror never undoes a newer one


@dataclass(frozen=True)
class RosterGet:
    user_id: bytes


ROSTER_OP = op(16, "roster.op", RosterOp, None, _PAIR, timeout=10.0)
ROSTER_MIRROR = op(17, "roster.mirror", RosterMirror, None, _USER)
ROSTER_GET = op(18, "roster.get", RosterGet, dict[str, list[str]], _USER)


# --- signalling (timpy/im/signalling.py) -------------------------------------------------------

@dataclass(frozen=True)
class SignalDirect:
    pair: bytes
    sender_id: bytes
    device_id: bytes
    peer_id: bytes
    signal: Signal  # as the peer's terminals get it


@dataclass(frozen=True)
class SignalConv:
    conv_id: bytes
    sender_id: bytes
    device_id: bytes
    signal: Signal  # as the members' terminals get it


SIGNAL_DIRECT = op(19, "signal.direct", SignalDirect, None, _PAIR)
SIGNAL_CONV = op(20, "signal.conv", SignalConv, None, _CONV, catch_up=True)


# --- rooms (timpy/im/rooms.py) -----------------------------------------------------------------

@dataclass(frozen=True)
class RoomEnter:
    room_key: bytes
    name: str
    user_id: bytes
    user: str
    device_id: bytes
    node: str


@dataclass(frozen=True)
class RoomLeave:
    room_key: bytes
    user_id: bytes
    device_id: bytes


@dataclass(frozen=True)
class RoomMembers:
    room_key: bytes


@dataclass(frozen=True)
class RoomStream:
    room_key: bytes
    user_id: bytes
    user: str
    device_id: bytes
    data: bytes


@dataclass(frozen=True)
class RoomReserve:
    user_id: bytes
    room_key: bytes
    device_id: bytes
    node: str
    again: bool  # entering again after a ring change: never refused for the limit


@dataclass(frozen=True)
class RoomRelease:
    user_id: bytes
    room_key: bytes
    device_id: bytes


_ROOMS_OF = KeyOwner("user_id", "user")  # rooms per user: in memory, nothing stored

ROOM_ENTER = op(21, "room.enter", RoomEnter, list[str], _ROOM)
ROOM_LEAVE = op(22, "room.leave", RoomLeave, list[str], _ROOM)
ROOM_MEMBERS = op(23, "room.members", RoomMembers, list[str], _ROOM)
ROOM_STREAM = op(24, "room.stream", RoomStream, None, _ROOM)
ROOM_RESERVE = op(25, "room.reserve", RoomReserve, None, _ROOMS_OF)
ROOM_RELEASE = op(26, "room.release", RoomRelease, None, _ROOMS_OF)


# --- routing records and pushes (timpy/im/routes.py, timpy/im/signal_routes.py) ----------------------

@dataclass(frozen=True)
class RouteResend:
    node: str  # the (re)started owner asking


@dataclass(frozen=True)
class RouteDetach:
    user_id: bytes
    device_id: bytes
    node: str


@dataclass(frozen=True)
class RouteKick:
    user_id: bytes
    device_id: bytes  # empty: every terminal of the user on that node
    reason: str


@dataclass(frozen=True)
class RouteKickUser:
    user_id: bytes
    reason: str


@dataclass(frozen=True)
class Push:
    user_id: bytes
    pos: int
    conversation: str
    seq: int
    created_ms: int
    content: bytes


@dataclass(frozen=True)
class SignalRoute:
    users: list[bytes]
    notice: list[Any]  # timpy.wire.messages.pack_notice (a Roster, Receipt, Signal, ... for terminals)
    skip: tuple[bytes, bytes] | None  # (user id, device id) of the terminal that caused it


@dataclass(frozen=True)
class SignalTerminals:
    terminals: list[tuple[bytes, bytes]]  # (user id, device id)
    notice: list[Any]  # timpy.wire.messages.pack_notice


# Notifications to a key's owner are not refused by a non-owner (nobody would hear the refusal).
_RECORDS_OF = KeyOwner("user_id", "user")

ROUTE_RESEND = op(27, "route.resend", RouteResend, int, THIS_NODE, timeout=2.0)
ROUTE_DETACH = op(28, "route.detach", RouteDetach, None, _RECORDS_OF, reply=False)
ROUTE_KICK = op(29, "route.kick", RouteKick, None, THIS_NODE, reply=False)
ROUTE_KICK_USER = op(30, "route.kick_user", RouteKickUser, None, _RECORDS_OF, reply=False)
PUSH = op(31, "push", Push, None, THIS_NODE, reply=False)
SIGNAL_ROUTE = op(32, "signal.route", SignalRoute, None, THIS_NODE, reply=False)
SIGNAL_DELIVER = op(33, "signal.deliver", SignalRoute, None, THIS_NODE, reply=False)
SIGNAL_TERMINALS = op(34, "signal.terminals", SignalTerminals, None, THIS_NODE, reply=False)


# --- shared backends (timpy/node/coordinator.py) --------------------------------------------------

@dataclass(frozen=True)
class BackendMapArgs:
    map: bytes  # BackendMap.pack()


@dataclass(frozen=True)
class NoArgs:
    pass


@dataclass(frozen=True)
class BackendAdd:
    name: str
    url: str
    weight: float = 1.0


@dataclass(frozen=True)
class BackendRemove:
    name: str


BACKEND_MAP = op(35, "backend.map", BackendMapArgs, int, THIS_NODE, timeout=35.0)
BACKEND_GET = op(36, "backend.get", NoArgs, bytes, ANY_NODE)
BACKEND_STATUS = op(37, "backend.status", NoArgs, dict[str, Any], THIS_NODE)
BACKEND_ADD = op(38, "backend.add", BackendAdd, dict[str, Any], THIS_NODE)
BACKEND_REMOVE = op(39, "backend.remove", BackendRemove, dict[str, Any], THIS_NODE)
BACKEND_RESUME = op(40, "backend.resume", NoArgs, dict[str, Any], THIS_NODE)


# --- ownership (timpy/cluster/ownership_service.py) --------------------------------------------

@dataclass(frozen=True)
class Grant:
    epoch: Epoch  # the asker's epoch (NO_EPOCH: a node with no ring asking for the answerer's)
    holder: str
    established: bool = False


@dataclass(frozen=True)
class EpochArgs:
    epoch: Epoch


@dataclass(frozen=True)
class Granted:
    granted: bool
    epoch: Epoch  # the answerer's
    established: bool = False  # the answerer knows a majority accepted ``epoch``


OWN_GRANT = op(41, "own.grant", Grant, Granted, THIS_NODE, timeout=1.0)
OWN_ACCEPT = op(42, "own.accept", EpochArgs, Granted, THIS_NODE, timeout=1.0)
OWN_ESTABLISHED = op(43, "own.established", EpochArgs, None, THIS_NODE, reply=False)
OWN_FENCE = op(44, "own.fence", EpochArgs, Epoch, THIS_NODE)


# --- the node (timpy/node/node.py, timpy/cli) --------------------------------------------------

@dataclass(frozen=True)
class Forget:
    node_id: str


@dataclass(frozen=True)
class Broadcast:
    broadcast_id: str
    body: bytes


@dataclass(frozen=True)
class Echo:
    body: bytes


CLUSTER_STATUS = op(45, "cluster.status", NoArgs, dict[str, Any], THIS_NODE)
CLUSTER_FORGET = op(46, "cluster.forget", Forget, dict[str, Any], THIS_NODE)
ADMIN_BROADCAST = op(47, "admin.broadcast", Broadcast, int, THIS_NODE, timeout=300.0)
ECHO = op(48, "echo", Echo, bytes, THIS_NODE)  # timpy bench paths


# --- messages: writing, reading, delivering (timpy/im/messaging.py, writer.py, delivery.py) ----

@dataclass(frozen=True)
class ConvAppend:
    """A checked message for its conversation's owner's writer (``NewMessage``)."""

    conv_id: bytes
    members: list[bytes]
    sender_id: bytes
    dedup: bytes
    created_ms: int
    content: bytes  # MessageContent.pack()


@dataclass(frozen=True)
class InboxAdd:
    """A message numbered by its conversation's owner, for the inboxes of users this node owns."""

    user_ids: list[bytes]  # every one owned by the node asked
    conv_id: bytes
    seq: int
    dedup: bytes
    created_ms: int
    sealed: bytes
    epoch: int = 0  # the row's stamp (``digest.row_stamp``)


@dataclass(frozen=True)
class HistoryOf:
    conv_id: bytes
    user_id: bytes  # the reader: a member, or nothing is read
    before: int  # 0: from the newest
    after: int  # -1: no lower bound
    limit: int


@dataclass(frozen=True)
class HistoryRow:
    seq: int
    created_ms: int
    content: bytes  # empty: recalled or burned


@dataclass(frozen=True)
class History:
    member: bool
    rows: list[HistoryRow]
    more: bool


@dataclass(frozen=True)
class StampedRow:
    seq: int
    created_ms: int
    content: bytes  # empty: recalled or burned
    stamp: int  # the row's epoch stamp (``digest.row_stamp``): of two values of one slot the higher wins


@dataclass(frozen=True)
class HistoryCopy:
    """A replica's page of a conversation, as it holds it (holes and all), with its highest seq."""

    member: bool
    rows: list[StampedRow]
    head: int


@dataclass(frozen=True)
class AccountExists:
    user_id: bytes


@dataclass(frozen=True)
class InboxRead:
    user_id: bytes
    after: int  # the position read up to
    limit: int


@dataclass(frozen=True)
class InboxEntry:
    pos: int
    conv_id: bytes
    seq: int
    created_ms: int
    content: bytes  # empty: recalled or burned


@dataclass(frozen=True)
class TermOpen:
    user_id: bytes
    device_id: bytes
    node: str  # the node holding the terminal
    kind: str  # the device kind given at login


@dataclass(frozen=True)
class TermAck:
    user_id: bytes
    device_id: bytes
    pos: int  # the terminal has every inbox entry up to here


CONV_APPEND = op(49, "conv.append", ConvAppend, Sent, _CONV)  # the writer catches up its batch's keys itself
INBOX_APPEND = op(50, "inbox.append", InboxAdd, list[int], THIS_NODE)  # each user's owner checked by the handler
CONV_HISTORY = op(51, "conv.history", HistoryOf, History, _CONV, catch_up=True)
CONV_HISTORY_COPY = op(52, "conv.history_copy", HistoryOf, History, THIS_NODE)  # a replica's copy, when the owner is out of reach
ACCT_EXISTS = op(53, "acct.exists", AccountExists, bool, _USER, catch_up=True)
INBOX_READ = op(54, "inbox.read", InboxRead, list[InboxEntry], _USER, catch_up=True)
TERM_OPEN = op(55, "term.open", TermOpen, int, _USER, catch_up=True)
TERM_ACK = op(56, "term.ack", TermAck, None, _RECORDS_OF, reply=False)


# --- files (timpy/im/attachments.py) -----------------------------------------------------------
#
# An attachment id is a key of its own (random, 16 bytes): its owner takes the
# upload and copies every change to the id's other replicas itself
# (files.apply, fenced by the ring epoch); reads go to any replica. The files
# feature catches a new owner up itself (files.state), so no op declares
# catch_up or replicate.

_FILE = KeyOwner("att_id", "file")


@dataclass(frozen=True)
class UploadBegin:
    att_id: bytes
    uploader_id: bytes
    uploader: str  # the uploader's name, kept in the sealed metadata
    name: str
    size: int
    mime: str
    sha256: str  # hex


@dataclass(frozen=True)
class UploadOf:
    att_id: bytes
    uploader_id: bytes


@dataclass(frozen=True)
class UploadPart:
    att_id: bytes
    uploader_id: bytes
    index: int
    data: bytes


@dataclass(frozen=True)
class FileLink:
    att_id: bytes
    sender_id: bytes
    members: list[bytes]  # the conversation's members: readers from now on
    size: int
    sha256: str


@dataclass(frozen=True)
class FileUse:
    att_id: bytes
    conv_id: bytes
    seq: int  # the file message referencing the attachment


@dataclass(frozen=True)
class FileChanges:
    ops: list[Any]  # ["att", row fields...], ["chunk", att, index, data], ["complete", att], ["readers", att, users], ...
    epoch: int  # the sender's ring epoch (a stale owner's copy is refused)


@dataclass(frozen=True)
class FileOf:
    att_id: bytes


@dataclass(frozen=True)
class FileRead:
    att_id: bytes
    user_id: bytes
    index: int  # -1: the attachment's row only


FILES_START = op(57, "files.start", UploadBegin, list[Any], _FILE)  # [id, chunk_size, chunks, have, complete]
FILES_RESUME = op(58, "files.resume", UploadOf, list[Any], _FILE)
FILES_CHUNK = op(59, "files.chunk", UploadPart, None, _FILE, timeout=15.0)
FILES_FINISH = op(60, "files.finish", UploadOf, list[Any], _FILE, timeout=60.0)  # the SHA-256 of every chunk
FILES_LINK = op(61, "files.link", FileLink, None, _FILE)  # the writer check of a file message
FILES_REF = op(62, "files.ref", FileUse, None, _FILE)
FILES_UNREF = op(63, "files.unref", FileUse, None, _FILE)
FILES_APPLY = op(64, "files.apply", FileChanges, None, THIS_NODE)  # at each other replica
FILES_STATE = op(65, "files.state", FileOf, list[Any] | None, THIS_NODE)  # [row, readers, refs] for a new owner
FILES_READ = op(66, "files.read", FileRead, list[Any] | None, THIS_NODE)  # ["ok", row, chunk] / ["refused"] / None


# --- replication and repair (timpy/im/replication.py) -------------------------------------------
#
# Copies travel as ``timpy.store.rows.Copies.pack()`` (one list of rows per
# table, the store's layout): the store unpacks and checks them, since the
# cluster layer does not know the tables. ``kind`` is "conv" or "user".

@dataclass(frozen=True)
class CopiesApply:
    copies: list[Any]  # Copies.pack()
    epoch: int  # the sender's ring epoch: a replica that accepted a newer one refuses the copy


@dataclass(frozen=True)
class CopiesUndo:
    epoch: int
    messages: list[tuple[bytes, int, bytes]]  # (conv, seq, dedup) of rows that missed their write quorum
    inbox: list[tuple[bytes, int, bytes, int]]  # (user, pos, conv, seq)


@dataclass(frozen=True)
class CopiesUndoAt:
    """``CopiesUndo`` of rows with one stamp (a writer batch gives all its rows
    one): only rows with it are removed, so a late undo never removes a later
    write of the same slot and message (a retry placed again)."""

    epoch: int
    messages: list[tuple[bytes, int, bytes]]  # (conv, seq, dedup)
    inbox: list[tuple[bytes, int, bytes, int]]  # (user, pos, conv, seq)
    stamp: int


@dataclass(frozen=True)
class CopiesAfter:
    key: bytes
    after: int  # the asker's head: rows beyond it
    limit: int
    epoch: Epoch | None  # the asker's (a new owner): the answerer refuses older writers from now on


@dataclass(frozen=True)
class RepairRange:
    kind: str
    after: bytes  # the range of keys (after, upto]
    upto: bytes | None  # None: to the end
    mine: list[tuple[bytes, bytes]]  # (key, content digest) the asker holds in the range
    asker: str


@dataclass(frozen=True)
class RepairKey:
    kind: str
    key: bytes


@dataclass(frozen=True)
class Buckets:
    meta: bytes  # the digest of the key's own row
    buckets: list[tuple[int, bytes]]  # (bucket, digest), in bucket order


@dataclass(frozen=True)
class RepairSlots:
    kind: str
    key: bytes
    buckets: list[int]


@dataclass(frozen=True)
class RepairRows:
    kind: str
    key: bytes
    slots: list[int]
    meta: bool  # the key's own row too


@dataclass(frozen=True)
class RepairApply:
    kind: str
    key: bytes
    copies: list[Any]  # Copies.pack()
    replace: list[int]  # slots held with another value here: ``digest.winner`` decides


COPIES_APPLY = op(67, "copies.apply", CopiesApply, int, THIS_NODE, timeout=3.0)
COPIES_UNDO = op(68, "copies.undo", CopiesUndo, int, THIS_NODE, timeout=2.0)
COPIES_CONV = op(69, "copies.conv", CopiesAfter, list[Any], THIS_NODE, timeout=2.0)
COPIES_USER = op(70, "copies.user", CopiesAfter, list[Any], THIS_NODE, timeout=2.0)
REPAIR_RANGE = op(71, "repair.range", RepairRange, list[bytes], THIS_NODE, timeout=10.0)
REPAIR_BUCKETS = op(72, "repair.buckets", RepairKey, Buckets | None, THIS_NODE, timeout=10.0)
REPAIR_SLOTS = op(73, "repair.slots", RepairSlots, list[tuple[int, bytes]], THIS_NODE, timeout=10.0)
REPAIR_ROWS = op(74, "repair.rows", RepairRows, list[Any], THIS_NODE, timeout=10.0)
REPAIR_APPLY = op(75, "repair.apply", RepairApply, tuple[int, int], THIS_NODE, timeout=10.0)  # (added, cleared)


# --- the conversation list (timpy/im/conversations.py) -------------------------------------------

@dataclass(frozen=True)
class ConvsList:
    user_id: bytes
    name: str  # the user's name: entries say "peer" from it
    offset: int
    limit: int
    archived: bool


@dataclass(frozen=True)
class ConvsPage:
    entries: list[dict[str, Any]]
    total: int


@dataclass(frozen=True)
class ConvsSet:
    user_id: bytes
    name: str
    conv_id: bytes
    muted: bool | None  # None: unchanged
    pinned: bool | None
    archived: bool | None


@dataclass(frozen=True)
class ConvsOf:
    user_id: bytes


@dataclass(frozen=True)
class ConvsGroup:
    user_id: bytes
    group: str  # the group's conversation id (text)
    name: str  # the group's name
    member: bool  # False: left, removed, or the group was dissolved


CONVS_LIST = op(76, "convs.list", ConvsList, ConvsPage, _USER)
CONVS_SET = op(77, "convs.set", ConvsSet, dict[str, Any], _USER)
CONVS_IDS = op(78, "convs.ids", ConvsOf, list[bytes], _USER)
CONVS_GROUP = op(79, "convs.group", ConvsGroup, None, _USER)


# --- threads (timpy/im/threads.py) -----------------------------------------------------------------

@dataclass(frozen=True)
class ThreadRoot:
    conv_id: bytes  # the parent conversation
    sender_id: bytes
    sender: str
    root: int  # the root message's seq


@dataclass(frozen=True)
class ThreadMember:
    conv_id: bytes  # the parent conversation
    user_id: bytes


@dataclass(frozen=True)
class ThreadHeads:
    threads: list[bytes]  # every one owned by the node asked


THREAD_ROOT = op(80, "thread.root", ThreadRoot, list[bytes], _CONV, timeout=15.0, catch_up=True)
THREAD_MEMBER = op(81, "thread.member", ThreadMember, bool, _CONV, catch_up=True)
THREAD_HEADS = op(82, "thread.heads", ThreadHeads, list[tuple[bytes, int]], THIS_NODE)  # each owner checked by the handler


# --- push gateways and search (timpy/im/push.py, timpy/im/search.py) ------------------------------

@dataclass(frozen=True)
class Pusher:
    """A push gateway registration (``timpy.im.push_rules.Pusher``)."""

    device: bytes
    app_id: str
    pushkey: str
    url: str
    data: dict[str, str]
    created_ms: int


@dataclass(frozen=True)
class PushersChange:
    user_id: bytes
    op: str  # "set", "remove" or "list"
    pusher: Pusher  # the one to set or remove


@dataclass(frozen=True)
class SearchConvs:
    user_id: bytes  # the reader: only conversations it is in are searched
    wanted: list[tuple[bytes, list[bytes]]]  # (conversation, its query tokens); every one owned by the node asked


PUSH_PUSHERS = op(83, "push.pushers", PushersChange, list[Pusher], _USER)  # the user's pushers after the change
SEARCH_CONVS = op(84, "search.convs", SearchConvs, list[tuple[bytes, int, int]], THIS_NODE, timeout=15.0)  # (conv, seq, ms); seq -1: not a member


@dataclass(frozen=True)
class Repaired:
    member: str
    epoch: int  # the epoch number under which ``member`` last finished a full repair pass


# A member finished a full repair pass (timpy/cluster/ownership_service.py): told to the voters, whose
# proposer drops the rings every key has left from the next epoch's history (docs/consistency.md).
OWN_REPAIRED = op(85, "own.repaired", Repaired, None, THIS_NODE, reply=False)


# --- webhooks (timpy/im/webhooks.py) ---------------------------------------------------------

@dataclass(frozen=True)
class DeadLettersOf:
    endpoint: str  # "": every endpoint
    after_id: int  # the asked node's own row id: the last one seen
    limit: int


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as the node delivering it holds it (ids are that node's)."""

    id: int
    endpoint: str
    event_id: str
    event_type: str
    attempts: int
    created_ms: int
    error: str
    body: bytes  # the event as it was sent


CONV_HISTORY_STAMPED = op(87, "conv.history_stamped", HistoryOf, HistoryCopy, THIS_NODE)  # a replica's rows with their stamps, when the owner is out of reach
WEBHOOKS_DEAD = op(86, "webhooks.dead", DeadLettersOf, list[DeadLetter], THIS_NODE, timeout=10.0)  # the asked node's dead letters of keys it delivers
COPIES_UNDO_AT = op(88, "copies.undo_at", CopiesUndoAt, int, THIS_NODE, timeout=2.0)  # copies.undo of one stamp
