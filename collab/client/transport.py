"""The Socket.IO connection itself: one ``socketio.AsyncClient`` per handshake.

Each handshake makes a new client with python-socketio's reconnection off (the
loop in :mod:`collab.client.reconnect` decides when to try again). Only the
current client counts: events and disconnects of an older one, or of one that
``detach()`` let go, are ignored, so a late packet from a dead connection can
never be taken for one from the live connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import socketio

try:
    # Without it python-engineio's client only logs "aiohttp package not installed" and
    # every connect fails as CONNECTION_FAILED: say at import what is missing instead.
    import aiohttp  # noqa: F401
except ImportError:
    raise ImportError(
        'collab.client needs aiohttp, which the "client" extra installs: '
        'pip install "collab-server[client]"',
        name="aiohttp",
    ) from None

from .errors import CONNECTION_FAILED, CollabError

Link = socketio.AsyncClient


class Transport:
    """Connects, hands every server event to ``on_event(event, data)`` and the loss of
    the connection to ``on_lost(link, reason)``, both called synchronously from
    python-socketio's tasks."""

    def __init__(self, url: str, *, transports: Iterable[str], socketio_path: str,
                 connect_timeout: float, on_event: Callable[[str, Any], None],
                 on_lost: Callable[[Link, str], None]) -> None:
        self.url = url
        self.transports = list(transports)
        self.socketio_path = socketio_path
        self.connect_timeout = connect_timeout
        self._on_event = on_event
        self._on_lost = on_lost
        #: the current client, connected or not; None before the first handshake and
        #: after ``detach()``
        self.link: Link | None = None
        #: set while the current client is connected and usable
        self.online = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def sid(self) -> str | None:
        return self.link.get_sid() if self.connected else None

    def reset(self) -> None:
        """Before a ``connect()``: a new ``online`` event, bound to the running loop when
        first awaited (a manager may be used again under another loop)."""
        self.online = asyncio.Event()

    async def handshake(self, token: str | None) -> None:
        """One connection attempt; raise :class:`CollabError` (the server's
        ``connect_error`` code, or ``CONNECTION_FAILED``)."""
        sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        refusals: list[Any] = []
        sio.on("connect", lambda: None)
        sio.on("connect_error", lambda *args: refusals.append(args[0] if args else None))
        sio.on("disconnect", partial(self._disconnected, sio))
        sio.on("*", partial(self._event, sio))
        self.link = sio  # current from now on: events right after the CONNECT count
        try:
            await sio.connect(
                self.url,
                auth={"token": token} if token else None,
                transports=self.transports,
                socketio_path=self.socketio_path,
                wait_timeout=self.connect_timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            # python-engineio leaves its aiohttp session open when the server is unreachable
            http = getattr(sio.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()
            raise refusal(refusals[-1] if refusals else None, exc) from None
        self.online.set()

    def detach(self) -> Link | None:
        """Stop listening to the current client (its disconnect is then not a loss) and
        return it, for the caller to close."""
        link, self.link = self.link, None
        self.online.clear()
        return link

    async def drop(self) -> None:
        """Close the current client; its disconnect reaches ``on_lost`` as any loss."""
        if self.link is not None and self.link.connected:
            await self.link.disconnect()

    def _disconnected(self, sio: Link, reason: Any = None) -> None:
        if sio is not self.link:
            return  # an old client, or one that detach() let go
        self.online.clear()
        self._on_lost(sio, str(reason or "lost"))

    def _event(self, sio: Link, event: str, *args: Any) -> None:
        if sio is not self.link:
            return
        data = args[0] if len(args) == 1 else list(args) if args else None
        self._on_event(event, data)


def refusal(data: Any, exc: Exception) -> CollabError:
    """``connect_error`` data (``{message, data: SocketError}``) as an exception."""
    if isinstance(data, dict):
        error = data.get("data") if isinstance(data.get("data"), dict) else data
        if "code" in error:
            return CollabError.from_dict(error)
    return CollabError(CONNECTION_FAILED, str(data or exc))
