"""Message values and kind numbers that client and server share, and their codecs.

Each value has one codec here and nowhere else:

- ``MessageContent``: what a message says (client id, sender, recipient,
  kind, body, ext), as the store seals it and nodes copy it; ``pack`` and
  ``unpack`` are the only code that knows its layout.
- ``ChatMessage`` to and from the client protocol's ``Message`` struct
  (``message_to_wire``/``message_from_wire``), used by the gateway and the
  client library alike.
- ``SendResult`` between nodes (``pack_send_result``/``unpack_send_result``).
- A message's reactions (``ext["reactions"]``, written by the node) and how
  one reaction changes them (``with_reaction``, ``reactions_of``).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import msgpack

from timpy.frozen import quick_init
from timpy.wire import protocol as wp

KIND_NORMAL = 0
KIND_RECALL = 1  # ext["target"]: the seq of the message it recalls
KIND_EDIT = 2  # ext["target"]: the seq of the message whose body it replaces
KIND_BURN = 3  # burn-after-reading (1:1): deleted once the recipient has read it
KIND_BURNED = 4  # made by the node when a BURN message was read; ext["target"]
KIND_DELETED = 5  # a delivery placeholder: the message at this inbox position is gone
KIND_REACT = 6  # ext["target"]: the seq reacted to; ext["key"]: the reaction; ext["on"]: "1" adds it, "0" removes it
KIND_FILE = 7  # the body is a FileRef (an uploaded attachment: id, name, size, type, hash, thumbnail)
KIND_CUSTOM_MIN = 100  # kinds from 100 on carry application-defined data
KNOWN_KINDS = frozenset({KIND_NORMAL, KIND_RECALL, KIND_EDIT, KIND_BURN, KIND_REACT, KIND_FILE})  # what a client may send

REACTIONS = "reactions"  # the ext entry where the node keeps a message's reactions
MAX_REACTION_KEY = 16  # characters in one reaction: an emoji, or a short word
MAX_REACTION_KEYS = 20  # different reactions shown on one message
MAX_REACTION_ENTRIES = 500  # (reaction, user) entries kept on one message, removals included

CONTENT_VERSION = 1  # the first field of a packed content


@quick_init
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

    @property
    def reactions(self) -> dict[str, list[str]]:
        """Who currently reacted to this message: reaction -> users (sorted)."""
        return reactions_of(self.ext)


@quick_init
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

    @staticmethod
    def kind_of(raw: bytes) -> int | None:
        """The kind of a packed content, without making the rest of it a
        value (the store asks it of every message it writes); None when the
        bytes are not plainly one this version writes (``unpack`` then says
        what they are)."""
        try:
            fields = msgpack.unpackb(raw, raw=False)
        except (TypeError, ValueError, msgpack.UnpackException):
            return None
        if type(fields) is list and len(fields) == 7 and type(fields[4]) is int:
            return fields[4]
        return None

    def at(self, conversation: str, seq: int, server_time: int) -> ChatMessage:
        """The message as readers see it once it is numbered."""
        return ChatMessage(
            conversation, seq, self.client_id, self.sender, self.recipient, self.kind, self.body, server_time,
            self.ext,
        )

    @staticmethod
    def of(m: ChatMessage) -> MessageContent:
        return MessageContent(m.client_id, m.sender, m.recipient, m.kind, m.body, m.ext)


@quick_init
@dataclass(frozen=True)
class Delivery:
    pos: int  # position in the receiving user's inbox
    message: ChatMessage


@quick_init
@dataclass(frozen=True)
class SendResult:
    message: ChatMessage
    duplicate: bool


def pack_content(client_id: str, sender: str, recipient: str, kind: int, body: bytes, ext: dict[str, str]) -> bytes:
    return MessageContent(client_id, sender, recipient, kind, body, ext).pack()


def unpack_content(conversation: str, seq: int, server_time: int, content: bytes) -> ChatMessage:
    return MessageContent.unpack(content).at(conversation, seq, server_time)


@dataclass(frozen=True)
class FileRef:
    """What a file message says of its attachment (the body of a ``KIND_FILE``
    message, or of a ``KIND_BURN`` message with ``ext["file"] = "1"``)."""

    attachment: str  # the attachment id (hex), as the upload returned it
    name: str
    size: int
    mime: str
    sha256: str  # hex SHA-256 of the whole content
    thumbnail: bytes = b""  # optional small preview (e.g. a JPEG), carried in the message itself

    def pack(self) -> bytes:
        return msgpack.packb(
            [1, self.attachment, self.name, self.size, self.mime, self.sha256, self.thumbnail], use_bin_type=True
        )

    @staticmethod
    def unpack(raw: bytes) -> FileRef:
        """Raises ValueError for bytes that are not a file reference."""
        try:
            _version, attachment, name, size, mime, sha256, thumbnail = msgpack.unpackb(raw, raw=False)
            return FileRef(str(attachment), str(name), int(size), str(mime), str(sha256), bytes(thumbnail))
        except (TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a file reference: {exc}") from None


def file_ref_of(kind: int, body: bytes, ext: dict[str, str]) -> FileRef | None:
    """The attachment a message references, if it is a file message (raises
    ValueError for a file message whose body is not a reference)."""
    if kind == KIND_FILE or (kind == KIND_BURN and ext.get("file") == "1"):
        return FileRef.unpack(body)
    return None


# --- reactions ---------------------------------------------------------------------
#
# A message's reactions are a last-writer-wins map per (reaction, user),
# ordered by the seq of the REACT message that set the entry: [seq, 1] added,
# [seq, 0] removed (a tombstone, so an older add that lands later loses). An
# entry changes only for a higher seq, so applying REACT messages in any
# order, any number of times, gives the same map on every copy.

ReactionState = dict[str, dict[str, list[int]]]  # reaction -> user -> [seq, on]


def reaction_key_error(key: object) -> str:
    """Why ``key`` cannot be a reaction ("" if it can)."""
    if not isinstance(key, str) or not key or len(key) > MAX_REACTION_KEY:
        return f"a reaction is an emoji or a word of 1 to {MAX_REACTION_KEY} characters"
    if key != key.strip() or any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in key):
        return "a reaction has no leading or trailing spaces and no control characters"
    return ""


def reaction_state(ext: dict[str, str]) -> ReactionState:
    """The reactions map stored on a message ({} if none, or not readable)."""
    raw = ext.get(REACTIONS, "")
    if not raw:
        return {}
    try:
        found = json.loads(raw)
        return {
            str(key): {str(user): [int(entry[0]), 1 if entry[1] else 0] for user, entry in users.items()}
            for key, users in found.items()
        }
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return {}


def with_reaction(ext: dict[str, str], key: str, user: str, seq: int, on: bool) -> dict[str, str] | None:
    """``ext`` with ``user``'s reaction ``key`` set (``on``) or removed by the
    REACT message at ``seq``; None when that changes nothing (a newer entry is
    there, or this very one)."""
    state = reaction_state(ext)
    entry = state.get(key, {}).get(user)
    if entry is not None and entry[0] >= seq:
        return None
    state.setdefault(key, {})[user] = [seq, 1 if on else 0]
    return {**ext, REACTIONS: json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)}


def reactions_of(ext: dict[str, str]) -> dict[str, list[str]]:
    """Reaction -> the users who currently have it (reactions nobody has left out)."""
    shown = {key: sorted(u for u, (_seq, on) in users.items() if on) for key, users in reaction_state(ext).items()}
    return {key: users for key, users in sorted(shown.items()) if users}


def reaction_limit_error(ext: dict[str, str], key: str, user: str, on: bool) -> str:
    """Why this reaction would pass a message's bounds ("" if it would not)."""
    state = reaction_state(ext)
    if on and key not in reactions_of(ext) and len(reactions_of(ext)) >= MAX_REACTION_KEYS:
        return f"a message shows at most {MAX_REACTION_KEYS} different reactions"
    if user not in state.get(key, {}) and sum(len(u) for u in state.values()) >= MAX_REACTION_ENTRIES:
        return f"this message has reached its limit of {MAX_REACTION_ENTRIES} reactions"
    return ""


def apply_reaction(target: ChatMessage, reaction: ChatMessage) -> ChatMessage:
    """``target`` as it is after the REACT message ``reaction`` (the same if it
    does not act on it): how a terminal folds a live reaction."""
    ext = reaction.ext
    if reaction.kind != KIND_REACT or ext.get("target") != str(target.seq) or reaction.conversation != target.conversation:
        return target
    changed = with_reaction(target.ext, ext.get("key", ""), reaction.sender, reaction.seq, ext.get("on", "1") == "1")
    return target if changed is None else ChatMessage(
        target.conversation, target.seq, target.client_id, target.sender, target.recipient, target.kind, target.body,
        target.server_time, changed,
    )


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
