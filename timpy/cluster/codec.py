"""msgpack encoding of membership messages: positional arrays (2.4x faster
than maps, ../shared/PERFORMANCE-NOTES.md), a type tag first."""

from __future__ import annotations

from typing import Any

import msgpack

from timpy.cluster.membership import Ack, Message, Ping, PingReq, PushPull, State, Update

_STATES = {s: i for i, s in enumerate(State)}
_STATE_OF = list(State)


class CodecError(ValueError):
    pass


def _u(u: Update) -> list[Any]:
    return [u.name, u.address, u.incarnation, _STATES[u.state], u.source]


def _update(raw: Any) -> Update:
    name, address, inc, state, source = raw
    if not (isinstance(name, str) and isinstance(address, str) and isinstance(inc, int) and isinstance(source, str)):
        raise CodecError("bad update")
    return Update(name, address, inc, _STATE_OF[state], source)


def encode(m: Message) -> bytes:
    if isinstance(m, Ping):
        body = [1, m.seq, m.source, m.target, [_u(u) for u in m.gossip]]
    elif isinstance(m, Ack):
        body = [2, m.seq, m.source, [_u(u) for u in m.gossip]]
    elif isinstance(m, PingReq):
        body = [3, m.seq, m.source, m.target, m.target_address, [_u(u) for u in m.gossip]]
    elif isinstance(m, PushPull):
        body = [4, m.source, [_u(u) for u in m.states], m.reply]
    else:  # pragma: no cover
        raise TypeError(type(m))
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """The msgpack value of a peer frame (membership message or RPC)."""
    try:
        return msgpack.unpackb(data, raw=False, max_array_len=100_000, max_map_len=100_000)
    except Exception as exc:
        raise CodecError(f"malformed peer frame: {type(exc).__name__}") from None


def decode(data: bytes) -> Message:
    return from_raw(unpack(data))


def from_raw(raw: Any) -> Message:
    try:
        tag = raw[0]
        if tag == 1:
            _, seq, source, target, gossip = raw
            return Ping(int(seq), str(source), str(target), tuple(_update(u) for u in gossip))
        if tag == 2:
            _, seq, source, gossip = raw
            return Ack(int(seq), str(source), tuple(_update(u) for u in gossip))
        if tag == 3:
            _, seq, source, target, address, gossip = raw
            return PingReq(int(seq), str(source), str(target), str(address), tuple(_update(u) for u in gossip))
        if tag == 4:
            _, source, states, reply = raw
            return PushPull(str(source), tuple(_update(u) for u in states), bool(reply))
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"malformed membership message: {type(exc).__name__}") from None
    raise CodecError(f"unknown membership message type {tag!r}")
