"""The JSON mapping of client protocol frames, for browsers (WebSocket text).

A struct maps to an object keyed by field name; unset fields are left out;
``binary`` fields are base64 strings; i64 values are JSON numbers (clients
must keep them below 2**53, which sequences and millisecond times are).
Example: ``{"rid": 3, "send": {"message": {"recipient": "bob", "body": "aGk="}}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from thriftpy2.thrift import TPayload, TType

from timpy.errors import Code, ProtocolError
from timpy.wire.protocol import thrift

_INT_RANGES = {
    TType.BYTE: (-(2**7), 2**7 - 1),
    TType.I16: (-(2**15), 2**15 - 1),
    TType.I32: (-(2**31), 2**31 - 1),
    TType.I64: (-(2**63), 2**63 - 1),
}


def _to_json(ttype: int, spec: Any, value: Any) -> Any:
    if ttype == TType.STRUCT:
        return struct_to_dict(value)
    if ttype == TType.BINARY:
        return base64.b64encode(value).decode("ascii")
    if ttype == TType.LIST or ttype == TType.SET:
        etype, espec = spec if isinstance(spec, tuple) else (spec, None)
        return [_to_json(etype, espec, item) for item in value]
    if ttype == TType.MAP:
        ktype, vtype = spec
        kt, ks = ktype if isinstance(ktype, tuple) else (ktype, None)
        vt, vs = vtype if isinstance(vtype, tuple) else (vtype, None)
        if kt != TType.STRING:
            raise TypeError("only string-keyed maps map to JSON")
        return {k: _to_json(vt, vs, v) for k, v in value.items()}
    return value


def struct_to_dict(struct: TPayload) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, spec in sorted(struct.thrift_spec.items()):
        ttype, name = spec[0], spec[1]
        value = getattr(struct, name)
        if value is None:
            continue
        out[name] = _to_json(ttype, spec[2] if len(spec) == 4 else None, value)
    return out


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(f"field {path}: {what}", Code.BAD_FRAME)


def _from_json(ttype: int, spec: Any, value: Any, path: str) -> Any:
    if ttype == TType.STRUCT:
        return dict_to_struct(spec, value, path)
    if ttype == TType.BINARY:
        if not isinstance(value, str):
            raise _bad(path, "expected a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(path, "not valid base64") from None
    if ttype == TType.STRING:
        if not isinstance(value, str):
            raise _bad(path, "expected a string")
        return value
    if ttype == TType.BOOL:
        if not isinstance(value, bool):
            raise _bad(path, "expected true or false")
        return value
    if ttype in _INT_RANGES:
        lo, hi = _INT_RANGES[ttype]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _bad(path, f"expected an integer in [{lo}, {hi}]")
        return value
    if ttype == TType.DOUBLE:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(path, "expected a number")
        return float(value)
    if ttype in (TType.LIST, TType.SET):
        if not isinstance(value, list):
            raise _bad(path, "expected a list")
        etype, espec = spec if isinstance(spec, tuple) else (spec, None)
        return [_from_json(etype, espec, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if ttype == TType.MAP:
        if not isinstance(value, dict):
            raise _bad(path, "expected an object")
        _, vtype = spec
        vt, vs = vtype if isinstance(vtype, tuple) else (vtype, None)
        return {k: _from_json(vt, vs, v, f"{path}.{k}") for k, v in value.items()}
    raise _bad(path, f"unsupported type {ttype}")  # pragma: no cover


def dict_to_struct(cls: type, data: Any, path: str = "") -> TPayload:
    if not isinstance(data, dict):
        raise _bad(path or "frame", "expected an object")
    fields = {spec[1]: spec for spec in cls.thrift_spec.values()}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        spec = fields.get(key)
        where = f"{path}.{key}" if path else key
        if spec is None:
            if cls is thrift.Frame:
                raise ProtocolError(f"unknown operation {key!r}", Code.UNKNOWN_OPERATION)
            raise _bad(where, "unknown field")
        if value is None:
            continue
        kwargs[key] = _from_json(spec[0], spec[2] if len(spec) == 4 else None, value, where)
    return cls(**kwargs)


def encode_json(frame: TPayload) -> str:
    return json.dumps(struct_to_dict(frame), separators=(",", ":"))


def decode_json(text: str) -> TPayload:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}", Code.BAD_FRAME) from None
    return dict_to_struct(thrift.Frame, data)
