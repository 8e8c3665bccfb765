"""The Python client library: ``timpy.connect`` and ``timpy.register``."""

from timpy.client.client import Ack, Client, GroupInfo, HistoryPage, connect, register

__all__ = ["Ack", "Client", "GroupInfo", "HistoryPage", "connect", "register"]
