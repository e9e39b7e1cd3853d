"""A Python client for collab servers: ``SocketManager`` and the errors it raises.

    from collab.client import CollabError, SocketManager

    async with SocketManager("http://127.0.0.1:8000", token=token) as manager:
        manager.on("chat:message", lambda data: print(data["message"]["content"]))
        chat = (await manager.emit("chat:create", {"title": "General"}))["chat"]
        await manager.emit("chat:join", {"chat_id": chat["id"]})

Live documents, a ``pycrdt.Doc`` kept in sync (``LiveDocument``):

    async with await manager.open_document("notes") as live:
        live.text += "more"
        await live.synced()

See docs/client.md. Needs aiohttp for its transports, which the ``client`` extra installs:
``pip install "collab-server[client]"``.
"""

from __future__ import annotations

from .errors import (
    CONNECTION_FAILED,
    DISCONNECTED,
    MAX_RECONNECT_EXCEEDED,
    TIMEOUT,
    TOKEN_PROVIDER_FAILED,
    AckTimeout,
    CollabError,
    TokenProviderError,
)
from .live import LiveDocument, ReadOnlyError, RemoteChange
from .manager import SocketManager

__all__ = [
    "CONNECTION_FAILED",
    "DISCONNECTED",
    "MAX_RECONNECT_EXCEEDED",
    "TIMEOUT",
    "TOKEN_PROVIDER_FAILED",
    "AckTimeout",
    "CollabError",
    "LiveDocument",
    "ReadOnlyError",
    "RemoteChange",
    "SocketManager",
    "TokenProviderError",
]
