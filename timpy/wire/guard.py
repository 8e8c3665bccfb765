"""A structural check of thrift binary encoding before the fast decoder sees it.

thriftpy2's Cython decoder keeps "reading" past the end of its buffer, so an
8-byte frame declaring a 2**31-element list of structs spins it for half a
minute (found by tests/wire/test_protocol.py). This walk reads every length and
count against the bytes actually present and refuses what cannot fit, so the
work any frame can cause is proportional to its size.
"""

from __future__ import annotations

import struct

from timpy.errors import Code, ProtocolError

_FIXED = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8}  # bool, byte, double, i16, i32, i64
_STRING, _STRUCT, _MAP, _SET, _LIST = 11, 12, 13, 14, 15
_I32 = struct.Struct(">i")
MAX_DEPTH = 32


class _Bad(Exception):
    pass


def check_binary_struct(data: bytes) -> None:
    """Raise ProtocolError(BAD_FRAME) unless ``data`` is exactly one well-formed struct."""
    try:
        end = _struct(data, 0, 0)
    except (_Bad, IndexError, struct.error) as exc:
        raise ProtocolError(f"malformed frame: {exc or 'truncated'}", Code.BAD_FRAME) from None
    if end != len(data):
        raise ProtocolError("bytes left over after the frame", Code.BAD_FRAME)


def _need(data: bytes, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(data):
        raise _Bad("length beyond the end of the frame")


def _struct(data: bytes, pos: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise _Bad("nested too deeply")
    while True:
        _need(data, pos, 1)
        ttype = data[pos]
        pos += 1
        if ttype == 0:
            return pos
        _need(data, pos, 2)
        pos = _value(data, pos + 2, ttype, depth)


def _count(data: bytes, pos: int, min_size: int) -> tuple[int, int]:
    _need(data, pos, 4)
    (n,) = _I32.unpack_from(data, pos)
    pos += 4
    _need(data, pos, n * min_size)  # every element takes at least min_size bytes
    return n, pos


def _min_size(ttype: int) -> int:
    if ttype in _FIXED:
        return _FIXED[ttype]
    if ttype == _STRING:
        return 4
    if ttype == _STRUCT:
        return 1
    if ttype in (_SET, _LIST):
        return 5
    if ttype == _MAP:
        return 6
    raise _Bad(f"unknown type {ttype}")


def _value(data: bytes, pos: int, ttype: int, depth: int) -> int:
    if ttype in _FIXED:
        n = _FIXED[ttype]
        _need(data, pos, n)
        return pos + n
    if ttype == _STRING:
        _need(data, pos, 4)
        (n,) = _I32.unpack_from(data, pos)
        _need(data, pos + 4, n)
        return pos + 4 + n
    if ttype == _STRUCT:
        return _struct(data, pos, depth + 1)
    if ttype in (_LIST, _SET):
        _need(data, pos, 1)
        etype = data[pos]
        n, pos = _count(data, pos + 1, _min_size(etype))
        for _ in range(n):
            pos = _value(data, pos, etype, depth + 1)
        return pos
    if ttype == _MAP:
        _need(data, pos, 2)
        ktype, vtype = data[pos], data[pos + 1]
        n, pos = _count(data, pos + 2, _min_size(ktype) + _min_size(vtype))
        for _ in range(n):
            pos = _value(data, pos, ktype, depth + 1)
            pos = _value(data, pos, vtype, depth + 1)
        return pos
    raise _Bad(f"unknown type {ttype}")
