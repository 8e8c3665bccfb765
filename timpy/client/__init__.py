"""The Python client library: ``timpy.connect`` and ``timpy.register``."""

from timpy.client.client import (
    Ack,
    Client,
    Connector,
    GroupInfo,
    HistoryPage,
    Notice,
    Presence,
    Profile,
    Pusher,
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

__all__ = ["Ack", "Client", "Connector", "GroupInfo", "HistoryPage", "Notice", "Presence", "Profile", "Pusher", "Receipt", "RoomInfo", "Roster", "Signal", "StreamData", "TlsError", "Unread", "UrlError", "connect", "register"]
