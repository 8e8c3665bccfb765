"""The Python client library: ``timpy.connect`` and ``timpy.register``."""

from timpy.client.client import Ack, Client, HistoryPage, connect, register

__all__ = ["Ack", "Client", "HistoryPage", "connect", "register"]
