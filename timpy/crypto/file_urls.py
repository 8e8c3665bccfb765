"""Signed, short-lived download URLs for attachments (browsers fetch files
over plain HTTP, where they cannot speak the client protocol).

The signature is HMAC-SHA256, under a key derived from the cluster key
(``derive_key(root, "file-url")``), over the attachment id, the reader's user
name and the expiry, so any node can check a URL another node made, and a
URL cannot be moved to another file, another user or a later time.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote


def _mac(key: bytes, attachment: str, user: str, expires: int) -> str:
    message = f"{attachment}\n{user}\n{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def file_url(key: bytes, attachment: str, user: str, expires: int) -> str:
    """The path and query of a signed URL (``/files/ID?u=USER&e=EXPIRES&s=SIG``)."""
    sig = _mac(key, attachment, user, expires)
    return f"/files/{attachment}?u={quote(user, safe='')}&e={expires}&s={sig}"


def check_file_url(key: bytes, attachment: str, user: str, expires: str, signature: str, now: float) -> str | None:
    """None when the signature is right and not expired; else what is wrong (in a user's words)."""
    if not expires.isdigit():
        return "this link is malformed"
    if not hmac.compare_digest(_mac(key, attachment, user, int(expires)), signature):
        return "this link is not valid"
    if int(expires) < now:
        return "this link has expired; open the file again from the chat"
    return None
