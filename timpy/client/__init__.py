"""The Python client library: ``timpy.connect`` and ``timpy.register``."""

from timpy.client.files import Attachment, HashMismatch
from timpy.client.client import (
    Ack,
    Client,
    Connector,
    GroupInfo,
    HistoryPage,
    Notice,
    Presence,
    Profile,
    Receipt,
    RoomInfo,
    Roster,
    Signal,
    StreamData,
    TlsError,
    Unread,
    UrlError,
    connect,
    register,
)

__all__ = ["Ack", "Attachment", "HashMismatch", "Client", "Connector", "GroupInfo", "HistoryPage", "Notice", "Presence", "Profile", "Receipt", "RoomInfo", "Roster", "Signal", "StreamData", "TlsError", "Unread", "UrlError", "connect", "register"]
