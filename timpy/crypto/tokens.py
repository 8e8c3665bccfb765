"""Signed, expiring session tokens that any node holding the cluster key can
verify without reading a database.

A token is ``base64url(msgpack body) "." base64url(Ed25519 signature)``; the
signing key is derived from the cluster key. Revocation (logout) is a list
of token ids kept by the node in memory and in storage until they expire.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing
import nacl.utils

from timpy.errors import AuthError, Code

TOKEN_VERSION = 1


@dataclass(frozen=True)
class TokenClaims:
    token_id: bytes
    user: str
    device: str
    issued_ms: int
    expires_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    def __init__(self, seed: bytes) -> None:
        self._signing = nacl.signing.SigningKey(seed)
        self._verify = self._signing.verify_key

    def issue(self, user: str, device: str, now_ms: int, ttl_ms: int) -> tuple[str, TokenClaims]:
        claims = TokenClaims(nacl.utils.random(16), user, device, now_ms, now_ms + ttl_ms)
        body = msgpack.packb(
            [TOKEN_VERSION, claims.token_id, user, device, claims.issued_ms, claims.expires_ms]
        )
        sig = self._signing.sign(body).signature
        return f"{_b64(body)}.{_b64(sig)}", claims

    def verify(self, token: str, now_ms: int) -> TokenClaims:
        """Check signature and expiry; raise AuthError(TOKEN_INVALID/TOKEN_EXPIRED)."""
        try:
            body_text, sig_text = token.split(".")
            body, sig = _unb64(body_text), _unb64(sig_text)
            self._verify.verify(body, sig)
            version, token_id, user, device, issued, expires = msgpack.unpackb(body)
            if version != TOKEN_VERSION:
                raise ValueError("version")
            claims = TokenClaims(bytes(token_id), str(user), str(device), int(issued), int(expires))
        except (ValueError, TypeError, binascii.Error, nacl.exceptions.BadSignatureError,
                msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError):
            raise AuthError("the session token is not valid; log in with a password", Code.TOKEN_INVALID) from None
        if claims.expires_ms <= now_ms:
            raise AuthError("the session token has expired; log in with a password", Code.TOKEN_EXPIRED)
        return claims
