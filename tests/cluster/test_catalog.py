"""The catalog of node-to-node operations: numbers pinned (append only),
every operation's arguments and result round-trip through msgpack, and a
malformed frame is refused naming the operation and the field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster import catalog
from timpy.cluster.catalog import ANY_NODE, OPS, THIS_NODE, KeyOwner, MalformedFrame, Op
from timpy.cluster.ownership import Epoch

# The protocol as it is: number -> (name, argument fields in wire order).
# ONLY APPEND: a changed line means nodes of one version misread each other.
PINNED: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ('acct.create', ('user_id', 'secret', 'profile')),
    2: ('acct.get', ('user_id', 'full')),
    3: ('acct.update', ('user_id', 'secret', 'disabled')),
    4: ('acct.profile', ('user_id', 'changes')),
    5: ('token.revoke', ('token_id', 'expires_ms')),
    6: ('group.request', ('group_id', 'actor', 'op', 'users', 'name', 'policy', 'flag', 'profile')),
    7: ('group.send', ('group_id', 'sender_id', 'sender', 'client_id', 'kind', 'body', 'ext')),
    8: ('group.inspect', ('group_id',)),
    9: ('group.system_send', ('group_id', 'system_id', 'client_id', 'body')),
    10: ('presence.set', ('user_id', 'name', 'status', 'text', 'invisible')),
    11: ('presence.get', ('user_id', 'user_ids', 'names', 'asker', 'subscribe', 'unsubscribe')),
    12: ('receipt.conv', ('conv_id', 'user_id', 'name', 'device_id', 'seq', 'read')),
    13: ('receipt.mark', ('user_id', 'conv_id', 'seq')),
    14: ('receipt.get_mark', ('user_id', 'conv_id')),
    15: ('receipt.unread', ('user_id', 'name')),
    16: ('roster.op', ('pair', 'actor', 'actor_id', 'op', 'peer', 'peer_id')),
    17: ('roster.mirror', ('user_id', 'user', 'peer', 'category', 'count')),
    18: ('roster.get', ('user_id',)),
    19: ('signal.direct', ('pair', 'sender_id', 'device_id', 'peer_id', 'signal')),
    20: ('signal.conv', ('conv_id', 'sender_id', 'device_id', 'signal')),
    21: ('room.enter', ('room_key', 'name', 'user_id', 'user', 'device_id', 'node')),
    22: ('room.leave', ('room_key', 'user_id', 'device_id')),
    23: ('room.members', ('room_key',)),
    24: ('room.stream', ('room_key', 'user_id', 'user', 'device_id', 'data')),
    25: ('room.reserve', ('user_id', 'room_key', 'device_id', 'node', 'again')),
    26: ('room.release', ('user_id', 'room_key', 'device_id')),
    27: ('route.resend', ('node',)),
    28: ('route.detach', ('user_id', 'device_id', 'node')),
    29: ('route.kick', ('user_id', 'device_id', 'reason')),
    30: ('route.kick_user', ('user_id', 'reason')),
    31: ('push', ('user_id', 'pos', 'conversation', 'seq', 'created_ms', 'content')),
    32: ('signal.route', ('users', 'notice', 'skip')),
    33: ('signal.deliver', ('users', 'notice', 'skip')),
    34: ('signal.terminals', ('terminals', 'notice')),
    35: ('backend.map', ('map',)),
    36: ('backend.get', ()),
    37: ('backend.status', ()),
    38: ('backend.add', ('name', 'url', 'weight')),
    39: ('backend.remove', ('name',)),
    40: ('backend.resume', ()),
    41: ('own.grant', ('epoch', 'holder', 'established')),
    42: ('own.accept', ('epoch',)),
    43: ('own.established', ('epoch',)),
    44: ('own.fence', ('epoch',)),
    45: ('cluster.status', ()),
    46: ('cluster.forget', ('node_id',)),
    47: ('admin.broadcast', ('broadcast_id', 'body')),
    48: ('echo', ('body',)),
    49: ('conv.append', ('conv_id', 'members', 'sender_id', 'dedup', 'created_ms', 'content')),
    50: ('inbox.append', ('user_ids', 'conv_id', 'seq', 'dedup', 'created_ms', 'sealed', 'epoch')),
    51: ('conv.history', ('conv_id', 'user_id', 'before', 'after', 'limit')),
    52: ('conv.history_copy', ('conv_id', 'user_id', 'before', 'after', 'limit')),
    53: ('acct.exists', ('user_id',)),
    54: ('inbox.read', ('user_id', 'after', 'limit')),
    55: ('term.open', ('user_id', 'device_id', 'node', 'kind')),
    56: ('term.ack', ('user_id', 'device_id', 'pos')),
    57: ('files.start', ('att_id', 'uploader_id', 'uploader', 'name', 'size', 'mime', 'sha256')),
    58: ('files.resume', ('att_id', 'uploader_id')),
    59: ('files.chunk', ('att_id', 'uploader_id', 'index', 'data')),
    60: ('files.finish', ('att_id', 'uploader_id')),
    61: ('files.link', ('att_id', 'sender_id', 'members', 'size', 'sha256')),
    62: ('files.ref', ('att_id', 'conv_id', 'seq')),
    63: ('files.unref', ('att_id', 'conv_id', 'seq')),
    64: ('files.apply', ('ops', 'epoch')),
    65: ('files.state', ('att_id',)),
    66: ('files.read', ('att_id', 'user_id', 'index')),
    67: ('copies.apply', ('copies', 'epoch')),
    68: ('copies.undo', ('epoch', 'messages', 'inbox')),
    69: ('copies.conv', ('key', 'after', 'limit', 'epoch')),
    70: ('copies.user', ('key', 'after', 'limit', 'epoch')),
    71: ('repair.range', ('kind', 'after', 'upto', 'mine', 'asker')),
    72: ('repair.buckets', ('kind', 'key')),
    73: ('repair.slots', ('kind', 'key', 'buckets')),
    74: ('repair.rows', ('kind', 'key', 'slots', 'meta')),
    75: ('repair.apply', ('kind', 'key', 'copies', 'replace')),
    76: ('convs.list', ('user_id', 'name', 'offset', 'limit', 'archived')),
    77: ('convs.set', ('user_id', 'name', 'conv_id', 'muted', 'pinned', 'archived')),
    78: ('convs.ids', ('user_id',)),
    79: ('convs.group', ('user_id', 'group', 'name', 'member')),
    80: ('thread.root', ('conv_id', 'sender_id', 'sender', 'root')),
    81: ('thread.member', ('conv_id', 'user_id')),
    82: ('thread.heads', ('threads',)),
    83: ('push.pushers', ('user_id', 'op', 'pusher')),
    84: ('search.convs', ('user_id', 'wanted')),
    85: ('own.repaired', ('member', 'epoch')),
    86: ('webhooks.dead', ('endpoint', 'after_id', 'limit')),
    87: ('conv.history_stamped', ('conv_id', 'user_id', 'before', 'after', 'limit')),
    88: ('copies.undo_at', ('epoch', 'messages', 'inbox', 'stamp')),
}


def test_the_pinned_numbers_keep_their_operations_and_fields():
    for number, (name, fields) in PINNED.items():
        assert number in OPS, f"operation {number} ({name}) was removed: retire it, never reuse its number"
        op = OPS[number]
        assert op.name == name, f"operation {number} was {name}, now {op.name}: numbers are never reused"
        got = tuple(f.name for f in dataclasses.fields(op.args))
        assert got == fields, f"{name}'s arguments changed order or shape: {fields} -> {got}; append a new operation"


def test_new_operations_are_appended_with_new_numbers_and_names():
    assert len({op.name for op in OPS.values()}) == len(OPS)
    for number, op in OPS.items():
        assert op.number == number
        assert number in PINNED or number > max(PINNED), f"{op.name} takes a number below the pinned ones"
        assert catalog.lookup(op.name) is op and catalog.lookup(number) is op


def test_declaring_a_taken_number_or_name_fails():
    with pytest.raises(ValueError, match="is acct.create already"):
        catalog.op(1, "x.again", catalog.Echo, bytes, THIS_NODE)
    with pytest.raises(ValueError, match="declared twice"):
        catalog.op(10_000, "echo", catalog.Echo, bytes, THIS_NODE)


def test_declarations_are_checked():
    @dataclasses.dataclass(frozen=True)
    class Args:
        user_id: bytes

    with pytest.raises(TypeError, match="key field"):
        Op(90_001, "t.a", Args, None, KeyOwner("nope", "user"))
    with pytest.raises(TypeError, match="need a key"):
        Op(90_002, "t.b", Args, None, ANY_NODE, catch_up=True)
    with pytest.raises(TypeError, match="space"):
        Op(90_003, "t.c", Args, None, KeyOwner("user_id", "room"), replicate=True)
    with pytest.raises(TypeError, match="no result"):
        Op(90_004, "t.d", Args, int, THIS_NODE, reply=False)
    with pytest.raises(TypeError, match="codec"):
        Op(90_005, "t.e", Args, set, THIS_NODE)


# --- values of a declared type ---------------------------------------------------------

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8),
                    st.binary(max_size=8))
_ANY = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                    max_leaves=6)


def values(tp: Any) -> st.SearchStrategy[Any]:
    if tp is Any:
        return _ANY
    simple = {bytes: st.binary(max_size=16), str: st.text(max_size=16), bool: st.booleans(),
              int: st.integers(-(2**63), 2**64 - 1), float: st.floats(allow_nan=False),
              type(None): st.none(), None: st.none()}
    if tp in simple:
        return simple[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(values(a) for a in args))
    if origin is list:
        return st.lists(values(args[0]), max_size=4)
    if origin is frozenset:
        return st.frozensets(values(args[0]), max_size=4)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(values(args[0]), max_size=4).map(tuple)
        return st.tuples(*(values(a) for a in args))
    if origin is dict:
        return st.dictionaries(values(args[0]), values(args[1]), max_size=4)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: values(hints[f.name]) for f in dataclasses.fields(tp)})
    raise AssertionError(f"no strategy for {tp!r}")


def accepted(tp: Any) -> set[type] | None:
    """The Python types a decoder of ``tp`` takes at the top level (None: anything)."""
    if tp is Any:
        return None
    if tp in (None, type(None)):
        return {type(None)}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        out: set[type] = set()
        for a in typing.get_args(tp):
            got = accepted(a)
            if got is None:
                return None
            out |= got
        return out
    if origin in (list, tuple, frozenset) or dataclasses.is_dataclass(tp):
        return {list}
    if origin is dict:
        return {dict}
    return {int, float} if tp is float else {tp}


WRONG = [b"bytes", "text", 7, 1.5, True, None, [1], {"k": 1}]


def wire(value: Any) -> Any:
    """Through msgpack and back, as a frame travels."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


ops_ = st.sampled_from(sorted(OPS.values(), key=lambda o: o.number))


@given(ops_, st.data())
def test_every_operation_round_trips_its_arguments(op, data):
    args = data.draw(values(op.args))
    assert op.decode_args(wire(op.encode_args(args))) == args


@given(ops_, st.data())
def test_every_operation_round_trips_its_result(op, data):
    result = data.draw(values(op.result))
    assert op.decode_result(wire(op.encode_result(result))) == result


@given(ops_, st.data())
def test_a_field_of_the_wrong_type_is_refused_naming_it(op, data):
    args = data.draw(values(op.args))
    raw = wire(op.encode_args(args))
    hints = typing.get_type_hints(op.args)
    fields = [f for f in dataclasses.fields(op.args) if accepted(hints[f.name]) is not None]
    if not fields:
        return
    i, field = data.draw(st.sampled_from(list(enumerate(dataclasses.fields(op.args)))).filter(lambda p: p[1] in fields))
    ok = accepted(hints[field.name])
    raw[i] = data.draw(st.sampled_from([w for w in WRONG if type(w) not in ok]))
    with pytest.raises(MalformedFrame, match=rf"^{op.name}\.{field.name}: expected"):
        op.decode_args(raw)


@given(ops_, st.data())
def test_a_frame_of_the_wrong_length_or_shape_is_refused(op, data):
    raw = wire(op.encode_args(data.draw(values(op.args))))
    n = len(raw)
    bad = data.draw(st.one_of(
        st.just(raw + [0]),
        st.just(raw[:-1]) if n else st.just([1]),
        st.sampled_from([None, b"x", "x", 3, {"a": 1}]),
    ))
    with pytest.raises(MalformedFrame, match=rf"^{op.name}: expected"):
        op.decode_args(bad)


def test_a_nested_value_is_checked_too():
    grant = catalog.OWN_GRANT.encode_args(catalog.Grant(catalog.Epoch(2, frozenset({"a"}), frozenset({"a"})), "a"))
    grant[0][1] = ["a", 5]
    with pytest.raises(MalformedFrame, match=r"own.grant.epoch.voters\[1\]: expected str, got int"):
        catalog.OWN_GRANT.decode_args(grant)
    with pytest.raises(MalformedFrame, match=r"acct.get result.version: expected int, got bool"):
        catalog.ACCT_GET.decode_result([b"s", False, b"", True])


def test_an_argument_of_another_operation_is_refused_when_sending():
    with pytest.raises(TypeError, match="acct.get takes AccountGet, not Echo"):
        catalog.ACCT_GET.encode_args(catalog.Echo(b"x"))


def test_ownership_is_declared_for_every_operation():
    for op in OPS.values():
        assert isinstance(op.owner, KeyOwner) or op.owner in (ANY_NODE, THIS_NODE)
        if op.catch_up or op.replicate:
            assert isinstance(op.owner, KeyOwner) and op.owner.space in ("user", "conv")


def test_an_epoch_travels_as_its_fields_and_decodes_to_one_object():
    """Epochs are encoded and decoded once each (lease traffic carries one in
    every message): the wire form stays the dataclass's, a second decode of
    equal fields gives the same object, and a malformed copy is still refused."""
    e = Epoch(7, frozenset("abc"), frozenset("ab"), frozenset("abc"), (frozenset("abcd"),))
    raw = catalog.OWN_ACCEPT.encode_args(catalog.EpochArgs(e))
    assert raw == [[7, ["a", "b", "c"], ["a", "b"], ["a", "b", "c"], [["a", "b", "c", "d"]]]]
    first = catalog.OWN_ACCEPT.decode_args(msgpack.unpackb(msgpack.packb(raw)))
    again = catalog.OWN_ACCEPT.decode_args(msgpack.unpackb(msgpack.packb(raw)))
    assert first.epoch == e and again.epoch is first.epoch
    for bad in ([[True, ["a", "b", "c"], ["a", "b"], ["a", "b", "c"], []]], [[7, ["a", {}], [], [], []]],
                [[7, "abc", [], [], []]], [[7, [], [], [], [{}]]]):
        with pytest.raises(MalformedFrame):
            catalog.OWN_ACCEPT.decode_args(bad)
