"""Encoding and decoding of client protocol frames defined in client.thrift.

The thrift binary protocol is used through thriftpy2's Cython implementation:
measured at ~110k encode+decode/s against ~8k/s for the pure-Python compact
protocol (docs/performance.md), so the compact one stays off the hot path.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.thrift import TPayload
from thriftpy2.transport import TMemoryBuffer
from thriftpy2.utils import serialize

from timpy.errors import Code, ProtocolError
from timpy.wire.guard import check_binary_struct

IDL_PATH = Path(__file__).with_name("client.thrift")
thrift = thriftpy2.load(str(IDL_PATH), module_name="timpy_client_thrift")

PROTOCOL_VERSION: int = thrift.PROTOCOL_VERSION
_FACTORY = TCyBinaryProtocolFactory()

Frame = thrift.Frame
Message = thrift.Message
GroupRequest = thrift.GroupRequest

#: The operation fields of Frame, in field-id order (everything but rid).
OPERATIONS: tuple[str, ...] = tuple(
    spec[1] for _, spec in sorted(thrift.Frame.thrift_spec.items()) if spec[1] != "rid"
)
_OP_INDEX: dict[str, int] = {op: i for i, op in enumerate(OPERATIONS)}
_OP_CLASSES: dict[str, type] = {
    spec[1]: spec[2] for spec in thrift.Frame.thrift_spec.values() if spec[1] != "rid"
}


def make_frame(op: str, payload: TPayload | None = None, rid: int = 0, **fields: Any) -> TPayload:
    """Build a Frame carrying one operation, e.g. ``make_frame("ping", nonce=1, rid=7)``."""
    if op not in _OP_CLASSES:
        raise ValueError(f"unknown operation {op!r}")
    if payload is None:
        payload = _OP_CLASSES[op](**fields)
    return thrift.Frame(rid=rid, **{op: payload})


def operation_of(frame: TPayload) -> tuple[str, TPayload]:
    """The one operation a frame carries; a frame with none or several is refused."""
    fields = vars(frame)
    send = fields.get("send")
    if send is not None:  # the frame a client sends most: is it alone? (counted in C, not walked field by field)
        values = list(fields.values())
        if len(values) - values.count(None) == (1 if fields.get("rid") is None else 2):
            return "send", send
    # The frame's attributes, not a getattr per operation (some eighty): a frame's fields are its attributes.
    found = [(op, v) for op, v in vars(frame).items() if v is not None and op in _OP_INDEX]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ProtocolError("frame carries no known operation", Code.UNKNOWN_OPERATION)
    found.sort(key=lambda f: _OP_INDEX[f[0]])
    raise ProtocolError(
        f"frame carries {len(found)} operations ({', '.join(op for op, _ in found)}); one is allowed",
        Code.BAD_FRAME,
    )


def encode(frame: TPayload) -> bytes:
    return serialize(frame, _FACTORY)


def decode(data: bytes) -> TPayload:
    """Decode one frame body; any malformed input raises ProtocolError(BAD_FRAME)."""
    fast = decode_send(data)
    return fast if fast is not None else decode_general(data)


def decode_general(data: bytes) -> TPayload:
    """``decode`` for any frame: the structural guard, then thriftpy2."""
    check_binary_struct(data)
    frame = thrift.Frame()
    try:
        buf = TMemoryBuffer(data)
        _FACTORY.get_protocol(buf).read_struct(frame)
        if buf.read(1):
            raise ProtocolError("bytes left over after the frame", Code.BAD_FRAME)
    except ProtocolError:
        raise
    except Exception as exc:  # thriftpy2 raises many kinds on bad input
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}", Code.BAD_FRAME) from None
    return frame


# --- the fast path for the frame a client sends most: ``send`` -------------------

_FRAME_FIELDS = {spec[1]: None for spec in thrift.Frame.thrift_spec.values()}
_MESSAGE_SPEC = thrift.Message.thrift_spec
_MESSAGE_FIELDS = {spec[1]: None for spec in _MESSAGE_SPEC.values()}
# Message's fields: id -> (name, the thrift type on the wire: 8 i32, 10 i64, 11 string or binary, 13 map)
_MESSAGE_WIRE = {fid: (spec[1], 11 if spec[0] == 18 else spec[0]) for fid, spec in _MESSAGE_SPEC.items()}
_MESSAGE_BINARY = frozenset(spec[1] for spec in _MESSAGE_SPEC.values() if spec[0] == 18)
_SEND_HEAD = b"\x0a\x00\x01"  # rid: i64, field 1
_SEND_OPEN = b"\x0c\x00\x09\x0c\x00\x01"  # send: struct, field 9; its message: struct, field 1
_SEND_CLOSE = b"\x00\x00\x00"  # the ends of Message, Send and Frame
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_NEW = object.__new__


def decode_send(data: bytes) -> TPayload | None:
    """A ``send`` frame in the layout thriftpy2 writes it (rid, then the send's
    message, its fields in id order, each of its declared type, strings in
    UTF-8, a map's keys distinct), decoded by hand; None for anything else,
    which ``decode`` then checks and decodes the general way (so a frame this
    refuses is not refused by it: it is only decoded by ``decode_general``).

    Every client send went through the structural guard, thriftpy2's decoder
    (a ``Frame`` of some fifty fields, all set) and a walk over those fields
    for the operation: about 18 µs a send, the largest single step of reading
    one. ``tests/wire/test_decode_send.py`` holds this to the general decoder
    on generated and damaged frames."""
    if type(data) is not bytes:
        return None
    n = len(data)
    if n < 20 or data[:3] != _SEND_HEAD or data[11:17] != _SEND_OPEN:
        return None
    pos = 17
    last = 0
    fields = dict(_MESSAGE_FIELDS)
    try:
        for _ in range(len(_MESSAGE_WIRE) + 1):  # bounded: field ids only grow
            ttype = data[pos]
            if ttype == 0:
                break
            fid = (data[pos + 1] << 8) | data[pos + 2]
            pos += 3
            if fid <= last or fid not in _MESSAGE_WIRE:
                return None
            last = fid
            name, wire = _MESSAGE_WIRE[fid]
            if ttype != wire:
                return None
            if ttype == 11:
                (size,) = _I32.unpack_from(data, pos)
                pos += 4
                if size < 0 or pos + size > n:
                    return None
                raw = data[pos:pos + size]
                pos += size
                fields[name] = raw if name in _MESSAGE_BINARY else raw.decode()
            elif ttype == 8:
                (fields[name],) = _I32.unpack_from(data, pos)
                pos += 4
            elif ttype == 10:
                (fields[name],) = _I64.unpack_from(data, pos)
                pos += 8
            else:  # 13: map<string, string>
                if data[pos] != 11 or data[pos + 1] != 11:
                    return None
                (count,) = _I32.unpack_from(data, pos + 2)
                pos += 6
                if count < 0 or pos + 8 * count > n:
                    return None
                ext: dict[str, str] = {}
                for _ in range(count):
                    pair = []
                    for _ in range(2):
                        (size,) = _I32.unpack_from(data, pos)
                        pos += 4
                        if size < 0 or pos + size > n:
                            return None
                        pair.append(data[pos:pos + size].decode())
                        pos += size
                    ext[pair[0]] = pair[1]
                if len(ext) != count:
                    return None
                fields[name] = ext
        else:
            return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if data[pos:] != _SEND_CLOSE:
        return None
    message = _NEW(thrift.Message)
    message.__dict__.update(fields)
    send = _NEW(thrift.Send)
    send.__dict__["message"] = message
    frame = _NEW(thrift.Frame)
    frame.__dict__.update(_FRAME_FIELDS)
    frame.rid = int.from_bytes(data[3:11], "big", signed=True)
    frame.send = send
    return frame
