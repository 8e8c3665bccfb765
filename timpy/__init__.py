"""timpy: a decentralized peer-to-peer cluster instant-messaging engine.

Embed a node: ``async with timpy.open_node(config) as node:``; connect a
client: ``async with timpy.connect(url, user, password) as client:``.
"""

from timpy.client import (
    Ack,
    Client,
    ConversationEntry,
    ConversationPage,
    GroupInfo,
    HistoryPage,
    Notice,
    Presence,
    Profile,
    Receipt,
    RoomInfo,
    Roster,
    SearchHit,
    SearchResults,
    Signal,
    StreamData,
    ThreadInfo,
    Unread,
    connect,
    register,
)
from timpy.client.files import Attachment, HashMismatch
from timpy.config import (
    ClusterConfig,
    Limits,
    NodeConfig,
    SecurityConfig,
    StorageConfig,
    load_config,
)
from timpy.errors import Code, RemoteError, TimpyError
from timpy.node import Node, open_node
from timpy.store.backends import BackendSpec
from timpy.wire.messages import (
    KIND_BURN,
    KIND_BURNED,
    KIND_CUSTOM_MIN,
    KIND_DELETED,
    KIND_EDIT,
    KIND_FILE,
    KIND_NORMAL,
    KIND_RECALL,
    ChatMessage,
    FileRef,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "Attachment",
    "BackendSpec",
    "ChatMessage",
    "Client",
    "ClusterConfig",
    "Code",
    "ConversationEntry",
    "ConversationPage",
    "FileRef",
    "GroupInfo",
    "HashMismatch",
    "HistoryPage",
    "KIND_BURN",
    "KIND_BURNED",
    "KIND_CUSTOM_MIN",
    "KIND_DELETED",
    "KIND_EDIT",
    "KIND_FILE",
    "KIND_NORMAL",
    "KIND_RECALL",
    "Limits",
    "Node",
    "NodeConfig",
    "Notice",
    "Presence",
    "Profile",
    "Receipt",
    "RemoteError",
    "RoomInfo",
    "Roster",
    "SearchHit",
    "SearchResults",
    "SecurityConfig",
    "Signal",
    "StorageConfig",
    "StreamData",
    "ThreadInfo",
    "TimpyError",
    "Unread",
    "connect",
    "load_config",
    "open_node",
    "register",
]
