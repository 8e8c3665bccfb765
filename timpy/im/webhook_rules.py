"""Webhooks, the pure part: signatures, retry delays, event ids, and the
answer of a check before a message is stored. No I/O (``webhooks.py`` sends).

A request's signature is HMAC-SHA256, keyed by the endpoint's secret, over
the timestamp (decimal Unix seconds), a dot, and the exact body bytes; it is
sent as ``X-Timpy-Signature: v1=<hex>`` beside ``X-Timpy-Timestamp``. Binding
the timestamp lets a receiver refuse a replayed request older than a few
minutes; the event id (``X-Timpy-Event-Id``) lets it drop a redelivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from timpy.im.events import event_id
from timpy.im.ratelimit import retry_delay as retry_delay  # the webhooks retry as push does

__all__ = ["event_id"]  # the events' idempotency keys (timpy.im.events), with the rest of the rules below
SIGNATURE_HEADER = "X-Timpy-Signature"
TIMESTAMP_HEADER = "X-Timpy-Timestamp"
EVENT_HEADER = "X-Timpy-Event"
EVENT_ID_HEADER = "X-Timpy-Event-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300  # seconds a receiver should accept between the timestamp and its clock


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Timpy-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str, now: float,
           tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, sent, body), header or "")


def headers(secret: str, event_type: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def envelope(event_type: str, event: str, time_ms: int, node: str, data: dict[str, Any]) -> bytes:
    """The JSON body of an event request."""
    return json.dumps({"id": event, "type": event_type, "time": time_ms, "node": node, "data": data},
                      separators=(",", ":"), sort_keys=True).encode()


def body_fields(body: bytes) -> dict[str, str]:
    """A message body in an event: ``body`` (text) when it is UTF-8, and ``body_base64`` always."""
    fields = {"body_base64": base64.b64encode(body).decode()}
    try:
        fields["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return fields


@dataclass(frozen=True)
class Verdict:
    """A check's answer: ``allow``, ``deny`` (with the reason the sender is shown) or ``rewrite`` (a new body)."""

    action: str
    reason: str = ""
    body: bytes | None = None


ALLOW = Verdict("allow")
MAX_REASON = 200


def parse_verdict(status: int, raw: bytes) -> Verdict:
    """The answer of a ``message.before_send`` endpoint; ValueError when it is not one.

    2xx with an empty body, or ``{"action": "allow"}``: allow.
    ``{"action": "deny", "reason": "..."}``: refuse, the reason shown to the sender.
    ``{"action": "rewrite", "body": "..."}`` (or ``"body_base64"``): store this body instead.
    """
    if not 200 <= status < 300:
        raise ValueError(f"HTTP status {status}")
    if not raw.strip():
        return ALLOW
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    action = answer.get("action", "allow")
    if action == "allow":
        return ALLOW
    if action == "deny":
        reason = answer.get("reason")
        reason = reason if isinstance(reason, str) and reason.strip() else "the message was refused"
        return Verdict("deny", reason=reason.strip()[:MAX_REASON])
    if action == "rewrite":
        if isinstance(answer.get("body_base64"), str):
            try:
                return Verdict("rewrite", body=base64.b64decode(answer["body_base64"], validate=True))
            except (binascii.Error, ValueError):
                raise ValueError("body_base64 is not base64") from None
        if isinstance(answer.get("body"), str):
            return Verdict("rewrite", body=answer["body"].encode("utf-8"))
        raise ValueError("a rewrite without a body")
    raise ValueError(f"unknown action {action!r}")
