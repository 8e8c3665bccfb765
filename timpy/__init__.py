"""timpy: a decentralized peer-to-peer cluster instant-messaging engine.

Embed a node: ``async with timpy.open_node(config) as node:``; connect a
client: ``async with timpy.connect(url, user, password) as client:``.
"""

from typing import TYPE_CHECKING

# The names below are imported when first used (PEP 562): a command such as
# ``timpy chat`` or ``timpy cluster status`` then loads the client or the
# cluster code it needs, not the whole node (store, gateway, every feature),
# which took seconds of start-up on every command.
_LAZY = {
    "timpy.client": (
        "Ack", "Client", "ConversationEntry", "ConversationPage", "GroupInfo", "HistoryPage", "Notice",
        "Presence", "Profile", "Receipt", "RoomInfo", "Roster", "SearchHit", "SearchResults", "Signal",
        "StreamData", "ThreadInfo", "Unread", "connect", "register",
    ),
    "timpy.client.files": ("Attachment", "HashMismatch"),
    "timpy.config": ("ClusterConfig", "Limits", "NodeConfig", "SecurityConfig", "StorageConfig", "load_config"),
    "timpy.errors": ("Code", "RemoteError", "TimpyError"),
    "timpy.node": ("Node", "open_node"),
    "timpy.store.backends": ("BackendSpec",),
    "timpy.wire.messages": (
        "KIND_BURN", "KIND_BURNED", "KIND_CUSTOM_MIN", "KIND_DELETED", "KIND_EDIT", "KIND_FILE", "KIND_NORMAL",
        "KIND_RECALL", "ChatMessage", "FileRef",
    ),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'timpy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
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
