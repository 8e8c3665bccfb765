"""The one error hierarchy of timpy.

Every error that can reach a client carries a numeric code from the client
protocol's ``ErrorCode`` enum (timpy/wire/client.thrift); the gateway turns a
``TimpyError`` into an ``Error`` frame for that client alone.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    # Must match enum ErrorCode in timpy/wire/client.thrift (a test checks).
    BAD_FRAME = 1000
    FRAME_TOO_LARGE = 1001
    UNKNOWN_OPERATION = 1002
    VERSION_UNSUPPORTED = 1003
    HANDSHAKE_REQUIRED = 1004
    RATE_LIMITED = 1005
    TOO_MANY_CONNECTIONS = 1006
    BAD_REQUEST = 1007
    TOO_SLOW = 1008
    AUTH_REQUIRED = 2000
    BAD_CREDENTIALS = 2001
    USER_EXISTS = 2002
    TOKEN_EXPIRED = 2003
    TOKEN_INVALID = 2004
    ACCOUNT_DISABLED = 2005
    INVALID_NAME = 2006
    WEAK_PASSWORD = 2007
    ALREADY_LOGGED_IN = 2008
    KICKED = 2009
    NO_SUCH_USER = 3000
    BODY_TOO_LARGE = 3001
    INVALID_MESSAGE = 3002
    NOT_A_MEMBER = 3003
    NO_SUCH_GROUP = 3004
    NOT_ALLOWED = 3005
    GROUP_FULL = 3006
    MUTED = 3007
    BLOCKED = 3008
    LIMIT_REACHED = 3009
    NO_SUCH_MESSAGE = 3010
    NO_SUCH_FILE = 3100
    FILE_TOO_LARGE = 3101
    HASH_MISMATCH = 3102
    INTERNAL = 5000
    UNAVAILABLE = 5001


class TimpyError(Exception):
    """An error with a code that may be shown to a client."""

    code: Code = Code.INTERNAL

    def __init__(self, text: str, code: Code | None = None) -> None:
        super().__init__(text)
        if code is not None:
            self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.text} (code {int(self.code)} {self.code.name})"


class ProtocolError(TimpyError):
    """The peer broke the protocol (bad frame, unknown operation, oversize)."""

    code = Code.BAD_FRAME


class AuthError(TimpyError):
    code = Code.BAD_CREDENTIALS


class RequestError(TimpyError):
    """A well-formed request that cannot be carried out as asked."""

    code = Code.BAD_REQUEST


class StorageError(TimpyError):
    """The storage backend failed; the operation had no effect."""

    code = Code.UNAVAILABLE


class ConfigError(TimpyError):
    """The configuration or the data directory is not usable as given."""

    code = Code.INTERNAL


class KeyMismatchError(ConfigError):
    """The cluster key does not open the data already stored."""


class RemoteError(TimpyError):
    """An error a node sent back to the client library."""
