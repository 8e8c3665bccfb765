"""Message values and kind numbers that client and server share, and the sealed-content encoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

KIND_NORMAL = 0
KIND_RECALL = 1  # ext["target"]: the seq of the message it recalls
KIND_EDIT = 2  # ext["target"]: the seq of the message whose body it replaces
KIND_BURN = 3  # burn-after-reading (1:1): deleted once the recipient has read it
KIND_BURNED = 4  # made by the node when a BURN message was read; ext["target"]
KIND_DELETED = 5  # a delivery placeholder: the message at this inbox position is gone
KIND_CUSTOM_MIN = 100  # kinds from 100 on carry application-defined data
KNOWN_KINDS = frozenset({KIND_NORMAL, KIND_RECALL, KIND_EDIT, KIND_BURN})  # what a client may send


@dataclass(frozen=True)
class ChatMessage:
    conversation: str
    seq: int
    client_id: str
    sender: str
    recipient: str
    kind: int
    body: bytes
    server_time: int
    ext: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    pos: int  # position in the receiving user's inbox
    message: ChatMessage


@dataclass(frozen=True)
class SendResult:
    message: ChatMessage
    duplicate: bool


def pack_content(client_id: str, sender: str, recipient: str, kind: int, body: bytes, ext: dict[str, str]) -> bytes:
    return msgpack.packb([1, client_id, sender, recipient, kind, body, ext], use_bin_type=True)


def unpack_content(conversation: str, seq: int, server_time: int, content: bytes) -> ChatMessage:
    _version, client_id, sender, recipient, kind, body, ext = msgpack.unpackb(content, raw=False)
    return ChatMessage(conversation, seq, client_id, sender, recipient, kind, bytes(body), server_time, dict(ext))
