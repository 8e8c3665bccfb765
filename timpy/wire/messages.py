"""Message values and kind numbers that client and server share, and their codecs.

Each value has one codec here and nowhere else:

- ``MessageContent``: what a message says (client id, sender, recipient,
  kind, body, ext), as the store seals it and nodes copy it; ``pack`` and
  ``unpack`` are the only code that knows its layout.
- ``ChatMessage`` to and from the client protocol's ``Message`` struct
  (``message_to_wire``/``message_from_wire``), used by the gateway and the
  client library alike.
- ``SendResult`` between nodes (``pack_send_result``/``unpack_send_result``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from timpy.wire import protocol as wp

KIND_NORMAL = 0
KIND_RECALL = 1  # ext["target"]: the seq of the message it recalls
KIND_EDIT = 2  # ext["target"]: the seq of the message whose body it replaces
KIND_BURN = 3  # burn-after-reading (1:1): deleted once the recipient has read it
KIND_BURNED = 4  # made by the node when a BURN message was read; ext["target"]
KIND_DELETED = 5  # a delivery placeholder: the message at this inbox position is gone
KIND_CUSTOM_MIN = 100  # kinds from 100 on carry application-defined data
KNOWN_KINDS = frozenset({KIND_NORMAL, KIND_RECALL, KIND_EDIT, KIND_BURN})  # what a client may send

CONTENT_VERSION = 1  # the first field of a packed content


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


@dataclass(frozen=True, slots=True)
class MessageContent:
    """What a message says, without where it sits (conversation, seq, time)."""

    client_id: str
    sender: str
    recipient: str
    kind: int
    body: bytes
    ext: dict[str, str]

    def pack(self) -> bytes:
        return msgpack.packb(
            [CONTENT_VERSION, self.client_id, self.sender, self.recipient, self.kind, self.body, self.ext],
            use_bin_type=True,
        )

    @staticmethod
    def unpack(raw: bytes) -> MessageContent:
        """Raises ValueError for bytes that are not a content this version writes."""
        try:
            _version, client_id, sender, recipient, kind, body, ext = msgpack.unpackb(raw, raw=False)
            return MessageContent(str(client_id), str(sender), str(recipient), int(kind), bytes(body), dict(ext))
        except (TypeError, KeyError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a message content: {exc}") from None

    def at(self, conversation: str, seq: int, server_time: int) -> ChatMessage:
        """The message as readers see it once it is numbered."""
        return ChatMessage(
            conversation, seq, self.client_id, self.sender, self.recipient, self.kind, self.body, server_time,
            self.ext,
        )

    @staticmethod
    def of(m: ChatMessage) -> MessageContent:
        return MessageContent(m.client_id, m.sender, m.recipient, m.kind, m.body, m.ext)


@dataclass(frozen=True)
class Delivery:
    pos: int  # position in the receiving user's inbox
    message: ChatMessage


@dataclass(frozen=True)
class SendResult:
    message: ChatMessage
    duplicate: bool


def pack_content(client_id: str, sender: str, recipient: str, kind: int, body: bytes, ext: dict[str, str]) -> bytes:
    return MessageContent(client_id, sender, recipient, kind, body, ext).pack()


def unpack_content(conversation: str, seq: int, server_time: int, content: bytes) -> ChatMessage:
    return MessageContent.unpack(content).at(conversation, seq, server_time)


# --- between nodes --------------------------------------------------------------


def pack_send_result(r: SendResult) -> list[Any]:
    """A send's result as a node-to-node answer (msgpack positional)."""
    m = r.message
    return [m.seq, m.server_time, r.duplicate, MessageContent.of(m).pack()]


def unpack_send_result(conversation: str, raw: list[Any]) -> SendResult:
    seq, server_time, duplicate, content = raw
    return SendResult(unpack_content(conversation, int(seq), int(server_time), bytes(content)), bool(duplicate))


# --- client protocol ----------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """What the sender of a message learns when it is stored."""

    client_id: str
    conversation: str
    seq: int
    server_time: int
    duplicate: bool


def ack_frame(rid: int, result: SendResult) -> Any:
    """The ``Ack`` frame answering a send."""
    m = result.message
    return wp.make_frame(
        "ack", rid=rid, client_id=m.client_id, conversation=m.conversation, seq=m.seq, server_time=m.server_time,
        duplicate=result.duplicate,
    )


def ack_of(body: Any) -> Ack:
    return Ack(body.client_id or "", body.conversation or "", body.seq or 0, body.server_time or 0, bool(body.duplicate))


def message_to_wire(m: ChatMessage) -> Any:
    """The client protocol's ``Message`` struct of a message."""
    return wp.Message(
        client_id=m.client_id, conversation=m.conversation, sender=m.sender, recipient=m.recipient, kind=m.kind,
        body=m.body, server_time=m.server_time, seq=m.seq, ext=m.ext,
    )


def message_from_wire(m: Any) -> ChatMessage:
    """A message from the client protocol's ``Message`` struct (missing fields empty)."""
    return ChatMessage(
        conversation=m.conversation or "", seq=m.seq or 0, client_id=m.client_id or "", sender=m.sender or "",
        recipient=m.recipient or "", kind=m.kind or 0, body=m.body or b"", server_time=m.server_time or 0,
        ext=dict(m.ext or {}),
    )


# --- notices: pushes that are not stored messages -----------------------------------


@dataclass(frozen=True)
class Roster:
    friends: list[str]
    incoming: list[str]  # friend requests waiting for this user's answer
    outgoing: list[str]  # this user's requests waiting for an answer
    blocked: list[str]


@dataclass(frozen=True)
class Presence:
    user: str
    online: bool
    status: str  # online, busy, away; "offline" when not online
    text: str
    since: int  # ms since the epoch of the last change


@dataclass(frozen=True)
class PresenceList:
    """Presences pushed together (the client sees each as a ``Presence``)."""

    users: list[Presence]


@dataclass(frozen=True)
class Receipt:
    conversation: str
    seq: int
    read: bool  # False: delivered
    user: str  # who received or read it


@dataclass(frozen=True)
class Signal:
    kind: str  # "typing", or an application's own
    sender: str
    data: bytes
    to: str = ""  # set for a signal to a user
    conversation: str = ""  # set for a signal to a conversation


@dataclass(frozen=True)
class StreamData:
    room: str
    sender: str
    data: bytes


@dataclass(frozen=True)
class ConversationChanged:
    """A conversation list entry that changed (``timpy.im.conversations``: the
    entry's fields as a dict, ``last`` as ``[seq, ms, content]`` or None)."""

    entry: dict[str, Any]


#: What the node pushes to terminals besides stored messages.
Notice = Roster | PresenceList | Receipt | Signal | StreamData | ConversationChanged

# The client frame's operation for each notice; also its tag between nodes.
_NOTICE_OPS: dict[type, str] = {
    Roster: "roster", PresenceList: "presence_list", Receipt: "receipt", Signal: "signal", StreamData: "stream",
    ConversationChanged: "conversation_entry",
}


def entry_to_wire(entry: dict[str, Any]) -> Any:
    """A conversation list entry (``timpy.im.conversations``) as a ConversationEntry struct."""
    fields = dict(entry)
    last = fields.pop("last", None)
    if last:
        seq, ms, content = last
        fields["last"] = message_to_wire(unpack_content(fields["conversation"], int(seq), int(ms), bytes(content)))
    return wp.thrift.ConversationEntry(**fields)


def notice_frame(notice: Notice, rid: int = 0) -> Any:
    """The client frame of a notice (rid 0: a push)."""
    if type(notice) is PresenceList:
        users = [
            wp.thrift.Presence(user=p.user, online=p.online, status=p.status, text=p.text, since=p.since)
            for p in notice.users
        ]
        return wp.make_frame("presence_list", rid=rid, users=users)
    if type(notice) is ConversationChanged:
        return wp.make_frame("conversation_entry", entry_to_wire(notice.entry), rid=rid)
    fields = {f: getattr(notice, f) for f in notice.__dataclass_fields__}
    return wp.make_frame(_NOTICE_OPS[type(notice)], rid=rid, **fields)


def roster_of(r: Any) -> Roster:
    """A ``Roster`` from the client protocol's struct (a reply or a push)."""
    return Roster(list(r.friends or []), list(r.incoming or []), list(r.outgoing or []), list(r.blocked or []))


def presences_of(found: Any) -> list[Presence]:
    """The presences of the client protocol's ``PresenceList`` (a reply or a push)."""
    return [Presence(p.user or "", bool(p.online), p.status or "", p.text or "", p.since or 0) for p in found.users or []]


def notices_of(op: str, body: Any) -> list[Roster | Presence | Receipt | Signal | StreamData]:
    """The notices a client frame carries (a presence list gives one ``Presence`` per user); [] for other frames."""
    if op == "roster":
        return [roster_of(body)]
    if op == "presence_list":
        return list(presences_of(body))
    if op == "receipt":
        return [Receipt(body.conversation or "", body.seq or 0, bool(body.read), body.user or "")]
    if op == "signal":
        return [Signal(body.kind or "", body.sender or "", body.data or b"", body.to or "", body.conversation or "")]
    if op == "stream":
        return [StreamData(body.room or "", body.sender or "", body.data or b"")]
    return []


def pack_notice(notice: Notice) -> list[Any]:
    """A notice between nodes: its tag, then its fields in order (msgpack positional)."""
    if type(notice) is PresenceList:
        return ["presence_list", [[p.user, p.online, p.status, p.text, p.since] for p in notice.users]]
    return [_NOTICE_OPS[type(notice)], *(getattr(notice, f) for f in notice.__dataclass_fields__)]


def unpack_notice(raw: list[Any]) -> Notice:
    tag, *fields = raw
    if tag == "presence_list":
        return PresenceList([Presence(str(u), bool(o), str(s), str(t), int(n)) for u, o, s, t, n in fields[0]])
    if tag == "roster":
        return Roster(*([str(x) for x in f] for f in fields))
    if tag == "receipt":
        conversation, seq, read, user = fields
        return Receipt(str(conversation), int(seq), bool(read), str(user))
    if tag == "signal":
        kind, sender, data, to, conversation = fields
        return Signal(str(kind), str(sender), bytes(data), str(to), str(conversation))
    if tag == "stream":
        room, sender, data = fields
        return StreamData(str(room), str(sender), bytes(data))
    if tag == "conversation_entry":
        (entry,) = fields
        return ConversationChanged(dict(entry))
    raise ValueError(f"unknown notice {tag!r}")
