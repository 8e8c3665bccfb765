"""NAT traversal, the pure parts: what a path is, how paths rank, the STUN
binding answer every node gives, and the control frames of the transport.

A peer channel runs over one of three paths (docs/nat.md):

- ``tcp``: a direct TCP connection, dialled by either side;
- ``ice``: a UDP path found by ICE (aioice), carrying QUIC (aioquic), inside
  which the usual authenticated, encrypted peer channel runs;
- ``relay``: the peer channel tunnelled through a third node that holds live
  channels to both; it forwards sealed bytes it cannot open.

Control frames travel in the same sealed channels as membership and RPC
messages; they start with the byte 0xC1, which msgpack never produces, so one
byte tells them apart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import msgpack
from aioice import stun

CONTROL = b"\xc1"

# control frames (msgpack list after the CONTROL byte)
FWD = 1  # [FWD, dst, src, sid, blob]: carry blob (sealed tunnel bytes) to dst; b"" closes
NOFWD = 2  # [NOFWD, dst, sid]: the relay holds no live channel to dst
ICE_OFFER = 3  # [ICE_OFFER, attempt, ufrag, pwd, [candidate sdp...]]
ICE_ANSWER = 4  # [ICE_ANSWER, attempt, ufrag, pwd, [candidate sdp...]]
ICE_FAIL = 5  # [ICE_FAIL, attempt, why]

RANK = {"relay": 1, "ice": 2, "tcp": 3}


class ControlError(ValueError):
    """A control frame that does not parse."""


@dataclass(frozen=True)
class Path:
    """How the channel to one peer runs."""

    kind: str  # tcp | ice | relay
    via: str = ""  # relay: the address of the relaying node
    local: str = ""  # ice: our candidate type (host, srflx, prflx, relay)
    remote: str = ""  # ice: the peer's candidate type
    inbound: bool = False  # the peer opened it

    @property
    def rank(self) -> int:
        return RANK[self.kind]

    def describe(self, names: dict[str, str] | None = None) -> str:
        """What ``timpy cluster status`` prints."""
        if self.kind == "tcp":
            return "direct TCP" + (" (inbound)" if self.inbound else "")
        if self.kind == "ice":
            return f"ICE {self.local} ↔ {self.remote}"
        via = (names or {}).get(self.via, self.via)
        return f"relayed via {via}"

    def as_dict(self, names: dict[str, str] | None = None) -> dict[str, object]:
        return {
            "kind": self.kind,
            "via": (names or {}).get(self.via, self.via),
            "local": self.local,
            "remote": self.remote,
            "inbound": self.inbound,
            "text": self.describe(names),
        }


def control(*items: object) -> bytes:
    return CONTROL + msgpack.packb(list(items), use_bin_type=True)


def parse_control(payload: bytes) -> list:
    """The list inside a control frame; ControlError when it is not one."""
    try:
        msg = msgpack.unpackb(payload[1:], raw=False)
    except Exception as exc:  # msgpack raises several kinds on garbage
        raise ControlError(f"malformed control frame: {type(exc).__name__}") from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], int):
        raise ControlError("malformed control frame")
    kind = msg[0]
    shapes = {FWD: (str, str, int, bytes), NOFWD: (str, int), ICE_OFFER: (int, str, str, list),
              ICE_ANSWER: (int, str, str, list), ICE_FAIL: (int, str)}
    shape = shapes.get(kind)
    if shape is None or len(msg) != len(shape) + 1:
        raise ControlError(f"unknown control frame {kind}")
    for value, want in zip(msg[1:], shape, strict=True):
        if not isinstance(value, want):
            raise ControlError(f"malformed control frame {kind}")
    if kind in (ICE_OFFER, ICE_ANSWER) and (len(msg[4]) > 32 or not all(isinstance(c, str) for c in msg[4])):
        raise ControlError("malformed candidate list")
    return msg


def stun_reply(data: bytes, addr: tuple[str, int]) -> bytes | None:
    """Answer a STUN binding request with the address it came from (RFC 5389
    XOR-MAPPED-ADDRESS), so a node behind NAT learns its server-reflexive
    address from any reachable peer; None for anything else."""
    try:
        request = stun.parse_message(data)
    except ValueError:
        return None
    if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
        return None
    try:
        ipaddress.IPv4Address(addr[0])
    except ValueError:
        return None
    reply = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    reply.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
    reply.add_fingerprint()
    return bytes(reply)
