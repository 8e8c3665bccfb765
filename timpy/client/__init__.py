"""The Python client library: ``timpy.connect`` and ``timpy.register``."""

from timpy.client.client import (
    Ack,
    Client,
    Connector,
    ConversationEntry,
    ConversationPage,
    GroupInfo,
    HistoryPage,
    Notice,
    Presence,
    Profile,
    Pusher,
    Receipt,
    RoomInfo,
    Roster,
    SearchHit,
    SearchResults,
    Signal,
    StreamData,
    ThreadInfo,
    TlsError,
    Unread,
    UrlError,
    connect,
    register,
)
from timpy.client.files import Attachment, HashMismatch

__all__ = ["Ack", "Attachment", "HashMismatch", "Client", "Connector", "ConversationEntry", "ConversationPage", "GroupInfo", "HistoryPage", "Notice", "Presence", "Profile", "Pusher", "Receipt", "RoomInfo", "Roster", "SearchHit", "SearchResults", "Signal", "StreamData", "ThreadInfo", "TlsError", "Unread", "UrlError", "connect", "register"]
