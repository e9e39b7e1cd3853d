"""``SocketManager``: a collab connection that survives restarts without losing messages.

The façade over the parts, each in its own module and composed here:

- :mod:`.transport`: the Socket.IO connection, one handshake at a time;
- :mod:`.reconnect`: when to try again (jittered exponential backoff) and how often;
- :mod:`.dispatch`: the ordered dispatcher and the user's handlers;
- :mod:`.calls`: acked calls, settled in order or failed as ``DISCONNECTED``/``TIMEOUT``;
- :mod:`.recovery`: what was joined, re-joined after a reconnect with what was missed;
- :mod:`.live`: documents open live, each a ``pycrdt.Doc`` resynced by state vectors;
- :mod:`.tokens`: where tokens come from, and ``auth:refresh`` before expiry.

After each handshake the recovery runs in the dispatcher, before any event that
came after it, and only then do the ``connected`` handlers run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

import pycrdt

from .calls import Calls, unwrap
from .dispatch import Dispatcher, Handler, Handlers
from .errors import (
    DISCONNECTED,
    MAX_RECONNECT_EXCEEDED,
    AckTimeout,
    CollabError,
    TokenProviderError,
)
from .live import LiveDocument, LiveRooms
from .reconnect import Backoff, Reconnector
from .recovery import ChatRooms, DocumentRooms, Rooms
from .tokens import TokenProvider, TokenRefresher, TokenSource
from .transport import Link, Transport

__all__ = ["Handler", "SocketManager", "TokenProvider"]

log = logging.getLogger("collab.client")


class SocketManager:
    """One Socket.IO connection to a collab server, with acks as results or exceptions,
    reconnection, recovery of what was missed, and token refresh.

    ``token`` is a JWT, or a provider: a sync or async callable returning one.
    ``token_provider`` is the same provider, kept for a ``token`` given as a string.
    A provider is asked for a token at every handshake (the first one excepted when
    ``token`` is a string) and before the token expires (``auth:refresh`` at 80% of
    its remaining lifetime).

    After an unexpected disconnect, attempt ``n`` waits a random time between
    ``min(reconnect_delay_max, reconnect_delay * reconnect_factor ** (n - 1))`` and
    the same for ``n + 1`` (see :class:`~collab.client.reconnect.Backoff`), for at
    most ``max_reconnect_attempts`` attempts in a row.
    """

    def __init__(
        self,
        url: str,
        token: str | TokenProvider | None = None,
        token_provider: TokenProvider | None = None,
        max_reconnect_attempts: int = 5,
        reconnect_delay: float = 1.0,
        reconnect_delay_max: float = 5.0,
        transports: Iterable[str] = ("websocket",),
        ack_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        socketio_path: str = "socket.io",
        reconnect_factor: float = 2.0,
    ) -> None:
        self._closed = True  # no connect() yet, disconnect() called, or reconnection gave up
        self._stopped = asyncio.Event()  # set when closed: wakes waiters

        self._tokens = TokenSource(token, token_provider)
        self._handlers = Handlers()
        self._dispatcher = Dispatcher()
        self._transport = Transport(url, transports=transports, socketio_path=socketio_path,
                                    connect_timeout=connect_timeout,
                                    on_event=self._on_event, on_lost=self._on_lost)
        self._calls = Calls(self._transport, self._dispatcher, ack_timeout)
        self._reconnector = Reconnector(
            Backoff(reconnect_delay, reconnect_factor, reconnect_delay_max),
            max_reconnect_attempts, self._reconnect_once, self._give_up)
        self._refresher = TokenRefresher(self._tokens, self._calls.call, self._report)
        # what to re-join after a reconnect, in this order
        self._document_rooms = DocumentRooms(self._calls.call, self._handlers.deliver)
        self._chat_rooms = ChatRooms(self._calls.call, self._handlers.deliver)
        self._live_rooms = LiveRooms(self._calls.call, ack_timeout)
        self._rooms: tuple[Rooms, ...] = (self._document_rooms, self._chat_rooms,
                                          self._live_rooms)

    # -- public API ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the transport is up right now (it may be re-joining rooms)."""
        return self._transport.connected

    @property
    def sid(self) -> str | None:
        return self._transport.sid

    @property
    def joined_documents(self) -> list[str]:
        return self._document_rooms.joined

    @property
    def joined_chats(self) -> list[str]:
        return self._chat_rooms.joined

    @property
    def live_documents(self) -> list[str]:
        """The documents open live (:meth:`open_document`), re-joined after a reconnect."""
        return self._live_rooms.joined

    # the constructor's settings, read-only: the parts hold them
    url = property(lambda self: self._transport.url)
    ack_timeout = property(lambda self: self._calls.ack_timeout)
    transports = property(lambda self: list(self._transport.transports))
    socketio_path = property(lambda self: self._transport.socketio_path)
    connect_timeout = property(lambda self: self._transport.connect_timeout)
    max_reconnect_attempts = property(lambda self: self._reconnector.max_attempts)
    reconnect_delay = property(lambda self: self._reconnector.backoff.initial)
    reconnect_factor = property(lambda self: self._reconnector.backoff.factor)
    reconnect_delay_max = property(lambda self: self._reconnector.backoff.cap)

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler(data)`` (sync or async) for a server event or for the local
        ``connected``, ``disconnected`` and ``error`` events. Usable as a decorator."""

        def register(fn: Handler) -> Handler:
            return self._handlers.add(event, fn)

        return register(handler) if handler is not None else register

    async def connect(self) -> None:
        """Connect once (no retry); raise :class:`CollabError` if refused or unreachable,
        :class:`~collab.client.errors.TokenProviderError` if the token provider fails.

        After reconnection gave up, ``connect()`` re-joins what was joined before."""
        if not self._closed:
            raise RuntimeError("SocketManager is already connected")
        self._closed = False
        self._stopped = asyncio.Event()
        self._transport.reset()
        self._dispatcher.start()
        try:
            await self._transport.handshake(await self._tokens.for_handshake())
        except BaseException:
            self._close()
            raise
        reconnected = any(rooms.tracked for rooms in self._rooms)
        if not await self._dispatcher.run(partial(self._resume, reconnected)):
            await self._transport.drop()  # the reconnection loop takes over

    async def disconnect(self) -> None:
        """Close the connection for good; ``disconnected`` handlers run before it returns."""
        if self._closed:
            return
        link = self._transport.detach()  # from here on, its disconnect event is ignored
        for rooms in self._rooms:
            rooms.clear()
        self._calls.fail_pending(link, direct_only=True)
        self._dispatcher.put(partial(self._lost, link, "client disconnect", False))
        self._close()
        if link is not None and link.connected:
            await link.disconnect()
        await self._dispatcher.join()

    async def emit(self, event: str, data: Any = None, timeout: float | None = None
                   ) -> dict[str, Any]:
        """Send an event and wait for its acknowledgement.

        Returns the ack's result fields (without ``ok``). Raises :class:`CollabError`
        with the server's code on a failure ack, ``DISCONNECTED`` when closed or when
        the connection drops before the ack, and :class:`AckTimeout` (code ``TIMEOUT``,
        also an ``asyncio.TimeoutError``) after ``timeout`` seconds (default
        ``ack_timeout``). While reconnecting it waits for the connection, within the
        same timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.ack_timeout if timeout is None else timeout)
        await self._wait_online(deadline)
        undos = [undo for rooms in self._rooms
                 if (undo := rooms.before_emit(event, data)) is not None]
        try:
            ack = await self._calls.call(event, data, deadline,
                                         partial(self._after_ack, event, data))
        except BaseException:
            for undo in undos:
                undo()
            raise
        return unwrap(ack)

    async def open_document(self, document_id: str, doc: pycrdt.Doc | None = None,
                            timeout: float | None = None) -> LiveDocument:
        """Join ``document_id`` live and return its :class:`~collab.client.live.LiveDocument`:
        a ``pycrdt.Doc`` (``doc``, or a new one) that is synced with the server, sends its
        local changes and receives the others', and resyncs after every reconnect.

        A ``doc`` with content of its own (edits made offline, kept from an earlier
        binding) is merged: the server gets what it lacks. Raises :class:`CollabError`
        as ``emit`` does (``NOT_FOUND``, ``PERMISSION_DENIED``, ``DISCONNECTED``,
        ``TIMEOUT``) and ``RuntimeError`` for a document already open, or joined plain
        with ``emit("documents:join")`` (leave it first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.ack_timeout if timeout is None else timeout)
        await self._wait_online(deadline)
        if document_id in self._document_rooms.joined:
            raise RuntimeError(f"Document {document_id!r} is joined plain: "
                               "emit documents:leave before opening it live")
        return await self._live_rooms.open(document_id, doc, deadline)

    async def __aenter__(self) -> SocketManager:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # -- the parts' callbacks ------------------------------------------------------

    def _on_event(self, event: str, data: Any) -> None:
        """From the transport: a server event on the current link."""
        self._dispatcher.put(partial(self._server_event, event, data))

    async def _server_event(self, event: str, data: Any) -> None:
        for rooms in self._rooms:
            if await rooms.on_event(event, data):
                return
        await self._handlers.deliver(event, data)

    async def _after_ack(self, event: str, data: Any, ack: Any) -> None:
        for rooms in self._rooms:
            await rooms.after_ack(event, data, ack)

    def _on_lost(self, link: Link, reason: str) -> None:
        """From the transport: the current link went down."""
        self._refresher.cancel()
        self._calls.fail_pending(link, direct_only=True)
        for rooms in self._rooms:
            rooms.lost()
        # after the tasks of packets already received, so their acks and events queue first
        asyncio.get_running_loop().call_soon(self._connection_lost, link, reason)

    def _connection_lost(self, link: Link, reason: str) -> None:
        if self._closed or link is not self._transport.link:
            return
        self._dispatcher.put(partial(self._lost, link, reason, True))
        self._reconnector.start()

    async def _lost(self, link: Link | None, reason: str, reconnecting: bool) -> None:
        """In the dispatcher: fail what waits on ``link``, then tell the handlers."""
        self._calls.fail_pending(link)
        await self._handlers.deliver("disconnected",
                                     {"reason": reason, "reconnecting": reconnecting})

    def _report(self, error: dict[str, Any]) -> None:
        """A local error for the ``error`` handlers, in turn with the events."""
        self._dispatcher.put(partial(self._handlers.deliver, "error", error))

    # -- connecting --------------------------------------------------------------

    async def _reconnect_once(self) -> bool:
        """One attempt of the reconnection loop: a token, a handshake, the recovery."""
        try:
            token = await self._tokens.for_handshake()
        except TokenProviderError as exc:
            self._report(exc.to_dict())
            raise
        await self._transport.handshake(token)
        if await self._dispatcher.run(partial(self._resume, True)) \
                and self._transport.online.is_set():
            return True  # connected and recovered: the next loss starts counting afresh
        await self._transport.drop()
        return False

    async def _resume(self, reconnected: bool) -> bool:
        """In the dispatcher: re-join everything; True if that worked and we are still
        connected. A room that is gone or forbidden now is forgotten (the server's
        ``error`` event tells the handlers); any other failure fails the attempt."""
        try:
            for rooms in self._rooms:
                await rooms.resume()
        except Exception as exc:  # noqa: BLE001 - the caller drops the connection and retries
            log.info("re-joining failed: %r", exc)
            return False
        if not self._transport.online.is_set():
            return False
        self._refresher.schedule()
        await self._handlers.deliver("connected", {"sid": self.sid, "reconnected": reconnected})
        return True

    def _give_up(self, attempts: int) -> None:
        log.warning("giving up reconnecting to %s after %d attempts", self.url, attempts)
        error = {"code": MAX_RECONNECT_EXCEEDED,
                 "message": f"Could not reconnect after {attempts} attempts"}
        self._dispatcher.put(partial(self._lost, None, "gave up", False))
        self._report(error)
        self._close()

    def _close(self) -> None:
        """Mark closed, wake every waiter, stop the timers and then the dispatcher."""
        self._closed = True
        self._stopped.set()
        self._refresher.cancel()
        self._reconnector.cancel()
        self._dispatcher.stop()

    async def _wait_online(self, deadline: float) -> None:
        if self._closed:
            raise CollabError(DISCONNECTED, "Not connected")
        online = self._transport.online
        if online.is_set():
            return
        waiters = [asyncio.ensure_future(online.wait()),
                   asyncio.ensure_future(self._stopped.wait())]
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait(waiters, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._closed:
            raise CollabError(DISCONNECTED, "Not connected")
        if not online.is_set():
            raise AckTimeout("Not reconnected in time")
