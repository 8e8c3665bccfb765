"""Push to offline devices, the pure part: a user's pushers, the gathering
of messages into one notification per device, and the Matrix push gateway
request and answer (``POST /_matrix/push/v1/notify``). No I/O (``push.py``
sends).

A pusher is what a device registers: the gateway's URL, an app id and the
push key its platform (APNs, FCM ...) gave it. Pushers are unique by
(app_id, pushkey), as in Matrix: the same key registered again replaces the
old one (a phone that changed hands, or the same device logging in again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from timpy.errors import Code, RequestError

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_APP_ID = 64
MAX_PUSHKEY = 512
MAX_DATA_BYTES = 1024
CONTENT_MODES = ("none", "sender", "full")
MAX_BODY_IN_PUSH = 1000  # characters of a body a "full" notification carries


@dataclass(frozen=True)
class Pusher:
    device: bytes  # the device id (opaque) that registered it
    app_id: str
    pushkey: str
    url: str
    data: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0

    def pack(self) -> list[Any]:
        return [self.device, self.app_id, self.pushkey, self.url, dict(self.data), self.created_ms]

    @classmethod
    def unpack(cls, raw: list[Any]) -> Pusher:
        device, app_id, pushkey, url, data, created_ms = raw
        return cls(bytes(device), str(app_id), str(pushkey), str(url), {str(k): str(v) for k, v in data.items()},
                   int(created_ms))


def check_pusher(app_id: str, pushkey: str, url: str, data: dict[str, str], gateways: tuple[str, ...] = ()) -> None:
    """A pusher a client may register (at one of ``gateways``, when some are
    named: scheme://host[:port]); RequestError saying what is wrong."""
    if not app_id or len(app_id) > MAX_APP_ID:
        raise RequestError(f"a pusher needs an app id of 1 to {MAX_APP_ID} characters", Code.BAD_REQUEST)
    if not pushkey or len(pushkey) > MAX_PUSHKEY:
        raise RequestError(f"a pusher needs a push key of 1 to {MAX_PUSHKEY} characters", Code.BAD_REQUEST)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path != NOTIFY_PATH:
        raise RequestError(f"a pusher's gateway URL is http(s)://HOST[:PORT]{NOTIFY_PATH}", Code.BAD_REQUEST)
    if gateways and f"{parts.scheme}://{parts.netloc}".lower() not in gateways:
        raise RequestError(f"this server sends notifications only through {', '.join(gateways)}", Code.NOT_ALLOWED)
    if sum(len(k) + len(v) for k, v in data.items()) > MAX_DATA_BYTES:
        raise RequestError(f"a pusher's data is at most {MAX_DATA_BYTES} characters", Code.BAD_REQUEST)


def with_pusher(pushers: list[Pusher], new: Pusher, limit: int) -> list[Pusher]:
    """The user's pushers once ``new`` is registered (it replaces one with the same app id and push key)."""
    kept = [p for p in pushers if (p.app_id, p.pushkey) != (new.app_id, new.pushkey)]
    if len(kept) >= limit:
        raise RequestError(f"this account has {limit} pushers, the limit; remove one first", Code.LIMIT_REACHED)
    return [*kept, new]


def without_pusher(pushers: list[Pusher], app_id: str, pushkey: str) -> list[Pusher]:
    return [p for p in pushers if (p.app_id, p.pushkey) != (app_id, pushkey)]


def without_rejected(pushers: list[Pusher], url: str, rejected: set[str]) -> list[Pusher]:
    """What is left once a gateway at ``url`` rejected these push keys."""
    return [p for p in pushers if not (p.url == url and p.pushkey in rejected)]


@dataclass
class Gathered:
    """Messages gathered for one pusher since its window opened."""

    due: float
    messages: int = 0
    conversation: str = ""
    seq: int = 0
    sender: str = ""
    body: bytes = b""


class Coalescer:
    """Messages to one pusher within ``window`` seconds make one notification.

    ``note`` returns the time the pusher's notification is due when it opens
    a window (None when one is open already); ``take_due`` hands out the
    notifications whose time has come. ``missed`` counts messages per
    device while it is offline (the badge); ``reset`` clears it when the
    device comes back.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._open: dict[tuple[bytes, str, str], Gathered] = {}
        self._missed: dict[tuple[bytes, bytes], int] = {}

    def note(self, user_id: bytes, pusher: Pusher, conversation: str, seq: int, sender: str, body: bytes,
             now: float) -> float | None:
        key = (user_id, pusher.app_id, pusher.pushkey)
        device = (user_id, pusher.device)
        self._missed[device] = self._missed.get(device, 0) + 1
        gathered = self._open.get(key)
        opened = gathered is None
        if gathered is None:
            gathered = self._open[key] = Gathered(now + self.window)
        gathered.messages += 1
        gathered.conversation, gathered.seq, gathered.sender, gathered.body = conversation, seq, sender, body
        return gathered.due if opened else None

    def missed(self, user_id: bytes, device: bytes) -> int:
        return self._missed.get((user_id, device), 0)

    def reset(self, user_id: bytes, device: bytes) -> None:
        self._missed.pop((user_id, device), None)

    def take_due(self, now: float) -> list[tuple[tuple[bytes, str, str], Gathered]]:
        due = [(k, g) for k, g in self._open.items() if g.due <= now]
        for k, _ in due:
            del self._open[k]
        return due

    def next_due(self) -> float | None:
        return min((g.due for g in self._open.values()), default=None)


def notify_request(pusher: Pusher, gathered: Gathered, unread: int, content: str) -> bytes:
    """The JSON body of ``POST /_matrix/push/v1/notify`` for one pusher.

    Content-free (``none``): the conversation and message ids and the counts,
    so the app wakes and fetches the message itself over its own connection.
    ``sender`` adds the sender's name; ``full`` adds the body as text.
    """
    notification: dict[str, Any] = {
        "event_id": f"{gathered.conversation}:{gathered.seq}",
        "room_id": gathered.conversation,
        "prio": "high",
        "counts": {"unread": unread},
        "devices": [{
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.created_ms // 1000,
            "data": dict(pusher.data),
        }],
    }
    if content in ("sender", "full"):
        notification["type"] = "m.room.message"
        notification["sender"] = gathered.sender
    if content == "full":
        notification["content"] = {
            "msgtype": "m.text", "body": gathered.body.decode("utf-8", "replace")[:MAX_BODY_IN_PUSH],
        }
    return json.dumps({"notification": notification}, separators=(",", ":")).encode()


def rejected_pushkeys(status: int, raw: bytes) -> set[str]:
    """The push keys a gateway's answer rejects; ValueError when the
    notification was not accepted (try again later)."""
    if not 200 <= status < 300:
        raise ValueError(f"HTTP status {status}")
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    rejected = answer.get("rejected", []) if isinstance(answer, dict) else None
    if not isinstance(rejected, list):
        raise ValueError("the answer has no list of rejected push keys")
    return {str(k) for k in rejected}
