"""``SocketManager``: a collab connection that survives restarts without losing messages.

How it keeps order: python-socketio runs each incoming packet in its own task.
Every event, and every acknowledgement of an ``emit`` made outside a handler,
goes through one queue that a single dispatcher task works off in arrival
order. So handlers run one at a time, in the order the server sent the events,
and by the time ``emit`` returns, the handlers of everything the server sent
before that acknowledgement have run. Recovery after a reconnect runs in the
dispatcher as well, so recovered and live messages never interleave wrongly.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Union

import jwt
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

from .errors import (
    CONNECTION_FAILED,
    DISCONNECTED,
    MAX_RECONNECT_EXCEEDED,
    AckTimeout,
    CollabError,
)
from .feed import ChatFeed, Message

log = logging.getLogger("collab.client")

Handler = Callable[[Any], Any]
TokenProvider = Callable[[], Union[str, Awaitable[str]]]
Job = Callable[[], Awaitable[Any]]

#: re-join failures that mean "forget this room" rather than "try the reconnect again"
PERMANENT = ("NOT_FOUND", "PERMISSION_DENIED", "INVALID_INPUT")
#: when to send ``auth:refresh``, as a share of the token's remaining lifetime
REFRESH_AT = 0.8


class SocketManager:
    """One Socket.IO connection to a collab server, with acks as results or exceptions,
    reconnection, recovery of what was missed, and token refresh.

    ``token_provider`` (a sync or async callable returning a JWT) is asked for a
    token when none was given, at the start of every reconnection, after a
    handshake refused as ``UNAUTHORIZED``, and before the token expires
    (``auth:refresh`` at 80% of its remaining lifetime).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        max_reconnect_attempts: int = 5,
        reconnect_delay: float = 1.0,
        reconnect_delay_max: float = 5.0,
        transports: Iterable[str] = ("websocket",),
        ack_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        socketio_path: str = "socket.io",
    ) -> None:
        self.url = url
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.reconnect_delay_max = reconnect_delay_max
        self.transports = list(transports)
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.socketio_path = socketio_path
        self._token = token
        self._token_provider = token_provider
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

        self._closed = True  # no connect() yet, disconnect() called, or reconnection gave up
        self._sio: socketio.AsyncClient | None = None
        self._online = asyncio.Event()  # the transport is connected
        self._stopped = asyncio.Event()  # set when closed: wakes waiters
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task | None = None
        self._reconnector: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None
        # future -> (the client it was sent on, settled directly rather than via the queue)
        self._pending: dict[asyncio.Future, tuple[socketio.AsyncClient, bool]] = {}
        # what to re-join after a reconnect
        self._documents: dict[str, int] = {}  # document id -> last version seen
        self._chats: dict[str, ChatFeed] = {}

    # -- public API ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the transport is up right now (it may be re-joining rooms)."""
        return self._sio is not None and self._sio.connected

    @property
    def sid(self) -> str | None:
        return self._sio.get_sid() if self.connected else None

    @property
    def joined_documents(self) -> list[str]:
        return list(self._documents)

    @property
    def joined_chats(self) -> list[str]:
        return [chat_id for chat_id, feed in self._chats.items() if not feed.joining]

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler(data)`` (sync or async) for a server event or for the local
        ``connected``, ``disconnected`` and ``error`` events. Usable as a decorator."""

        def register(fn: Handler) -> Handler:
            self._handlers[event].append(fn)
            return fn

        return register(handler) if handler is not None else register

    async def connect(self) -> None:
        """Connect once (no retry); raise :class:`CollabError` if refused or unreachable.

        After reconnection gave up, ``connect()`` re-joins what was joined before."""
        if not self._closed:
            raise RuntimeError("SocketManager is already connected")
        self._closed = False
        self._stopped = asyncio.Event()
        self._online = asyncio.Event()
        self._queue = asyncio.Queue()
        self._dispatcher = asyncio.create_task(self._dispatch(self._queue))
        try:
            if self._token is None and self._token_provider is not None:
                self._token = await self._fresh_token()
            await self._handshake()
        except BaseException:
            self._close()
            raise
        resumed = await self._in_dispatcher(
            partial(self._resume, bool(self._documents or self._chats)))
        if not resumed:
            await self._drop()  # the reconnection loop takes over

    async def disconnect(self) -> None:
        """Close the connection for good; ``disconnected`` handlers run before it returns."""
        if self._closed:
            return
        sio = self._sio
        self._sio = None  # from here on, the client's own disconnect event is ignored
        self._online.clear()
        self._documents.clear()
        self._chats.clear()
        self._fail_pending(sio, direct_only=True)
        self._queue.put_nowait(partial(self._lost, sio, "client disconnect", False))
        self._close()
        if sio is not None and sio.connected:
            await sio.disconnect()
        if self._dispatcher is not None and self._dispatcher is not asyncio.current_task():
            await asyncio.gather(self._dispatcher, return_exceptions=True)

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
        created = self._before_emit(event, data)
        try:
            ack = await self._call(event, data, deadline, partial(self._after_ack, event, data))
        except BaseException:
            if created is not None and self._chats.get(created[0]) is created[1]:
                if created[1].joining:
                    del self._chats[created[0]]
            raise
        return _result(ack)

    async def __aenter__(self) -> SocketManager:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # -- connecting --------------------------------------------------------------

    async def _handshake(self) -> None:
        """One connection attempt with the current token; raise :class:`CollabError`."""
        sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        refusals: list[Any] = []
        sio.on("connect", lambda: None)
        sio.on("connect_error", lambda *args: refusals.append(args[0] if args else None))
        sio.on("disconnect", partial(self._on_sio_disconnect, sio))
        sio.on("*", partial(self._on_sio_event, sio))
        self._sio = sio  # current from now on: events right after the CONNECT count
        try:
            await sio.connect(
                self.url,
                auth={"token": self._token} if self._token else None,
                transports=self.transports,
                socketio_path=self.socketio_path,
                wait_timeout=self.connect_timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            # python-engineio leaves its aiohttp session open when the server is unreachable
            http = getattr(sio.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()
            raise _refusal(refusals[-1] if refusals else None, exc) from None
        self._online.set()

    async def _fresh_token(self) -> str:
        assert self._token_provider is not None
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise CollabError("UNAUTHORIZED", "token_provider returned no token")
        return token

    def _on_sio_disconnect(self, sio: socketio.AsyncClient, reason: Any = None) -> None:
        if sio is not self._sio:
            return  # an old client, or disconnect() is closing this one
        self._online.clear()
        self._cancel_refresh()
        self._fail_pending(sio, direct_only=True)
        # after the tasks of packets already received, so their acks and events queue first
        asyncio.get_running_loop().call_soon(self._connection_lost, sio, str(reason or "lost"))

    def _connection_lost(self, sio: socketio.AsyncClient, reason: str) -> None:
        if self._closed or sio is not self._sio:
            return
        self._queue.put_nowait(partial(self._lost, sio, reason, True))
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.create_task(self._reconnect())

    async def _lost(self, sio: socketio.AsyncClient | None, reason: str, reconnecting: bool
                    ) -> None:
        """In the dispatcher: fail what waits on ``sio``, then tell the handlers."""
        self._fail_pending(sio)
        await self._deliver("disconnected", {"reason": reason, "reconnecting": reconnecting})

    def _fail_pending(self, sio: socketio.AsyncClient | None, direct_only: bool = False
                      ) -> None:
        """Calls sent on ``sio`` (any, if None) lose their ack. Direct ones fail at once:
        the dispatcher is blocked on them; queued ones in turn, after earlier acks."""
        for fut, (on, direct) in list(self._pending.items()):
            if (sio is None or on is sio) and (direct or not direct_only) and not fut.done():
                fut.set_exception(CollabError(DISCONNECTED, "Connection lost"))

    async def _reconnect(self) -> None:
        """The design's loop: ``reconnect_delay * attempt`` (capped) between attempts,
        at most ``max_reconnect_attempts`` in a row; a success resets the count."""
        attempt = 0
        fresh_token = self._token_provider is not None
        while not self._closed:
            attempt += 1
            if attempt > self.max_reconnect_attempts:
                self._give_up(attempt - 1)
                return
            delay = min(self.reconnect_delay * attempt, self.reconnect_delay_max)
            if await self._pause(delay):
                return
            try:
                if fresh_token:
                    self._token = await self._fresh_token()
                    fresh_token = False
                await self._handshake()
            except CollabError as exc:
                log.info("reconnect attempt %d failed: %s %s", attempt, exc.code, exc.message)
                fresh_token = exc.code == "UNAUTHORIZED" and self._token_provider is not None
                continue
            except Exception as exc:  # noqa: BLE001 - a failing token_provider: try again
                log.warning("reconnect attempt %d failed: %r", attempt, exc)
                fresh_token = True
                continue
            if await self._in_dispatcher(partial(self._resume, True)) and self._online.is_set():
                return  # connected and recovered: the next loss starts counting afresh
            await self._drop()

    async def _drop(self) -> None:
        """Close a connection whose recovery failed; the loss starts (or feeds) the loop."""
        if self._sio is not None and self._sio.connected:
            await self._sio.disconnect()

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if the manager was closed meanwhile."""
        try:
            await asyncio.wait_for(self._stopped.wait(), delay)
        except asyncio.TimeoutError:
            return self._closed
        return True

    def _give_up(self, attempts: int) -> None:
        log.warning("giving up reconnecting to %s after %d attempts", self.url, attempts)
        error = {"code": MAX_RECONNECT_EXCEEDED,
                 "message": f"Could not reconnect after {attempts} attempts"}
        self._queue.put_nowait(partial(self._lost, None, "gave up", False))
        self._queue.put_nowait(partial(self._deliver, "error", error))
        self._close()

    def _close(self) -> None:
        """Mark closed, wake every waiter, stop the timers and then the dispatcher."""
        self._closed = True
        self._stopped.set()
        self._cancel_refresh()
        if self._reconnector is not None and self._reconnector is not asyncio.current_task():
            self._reconnector.cancel()
        self._queue.put_nowait(None)

    # -- after each connect: re-join, recover, announce ---------------------------

    async def _resume(self, reconnected: bool) -> bool:
        """In the dispatcher: re-join everything; True if that worked and we are still
        connected. A room that is gone or forbidden now is forgotten (the server's
        ``error`` event tells the handlers); any other failure fails the attempt."""
        try:
            for document_id in list(self._documents):
                await self._rejoin_document(document_id)
            for chat_id, feed in list(self._chats.items()):
                if not feed.joining:
                    await self._rejoin_chat(chat_id, feed)
        except Exception as exc:  # noqa: BLE001 - the caller drops the connection and retries
            log.info("re-joining failed: %r", exc)
            return False
        if not self._online.is_set():
            return False
        self._schedule_refresh()
        await self._deliver("connected", {"sid": self.sid, "reconnected": reconnected})
        return True

    async def _rejoin_document(self, document_id: str) -> None:
        known = self._documents[document_id]
        ack = await self._call("documents:join", {"document_id": document_id})
        if _forgotten(ack):
            self._documents.pop(document_id, None)
            return
        document = _result(ack)["document"]
        self._documents[document_id] = document["version"]
        if document["version"] != known:
            await self._deliver("documents:updated",
                                {"document": document, "user_id": None, "recovered": True})

    async def _rejoin_chat(self, chat_id: str, feed: ChatFeed) -> None:
        ack = await self._call("chat:join", {"chat_id": chat_id, "since_seq": feed.last})
        if _forgotten(ack):
            self._chats.pop(chat_id, None)
            return
        messages = _result(ack)["messages"]
        await self._offer(chat_id, feed, messages, recovered=True)
        if messages:
            # the page may have been cut at the server's limit: the newest message tells
            latest = _result(await self._call("chat:history", {"chat_id": chat_id, "limit": 1}))
            await self._offer(chat_id, feed, latest["messages"], recovered=True)

    # -- tracking joins and feeds ------------------------------------------------

    def _before_emit(self, event: str, data: Any) -> tuple[str, ChatFeed] | None:
        """A first ``chat:join``: hold its broadcasts back until the ack says where
        the history ends."""
        chat_id = _field(data, "chat_id")
        if event == "chat:join" and chat_id is not None and chat_id not in self._chats:
            feed = self._chats[chat_id] = ChatFeed()
            return chat_id, feed
        return None

    async def _after_ack(self, event: str, data: Any, ack: Any) -> None:
        """In the dispatcher, as the ack arrives: update what to re-join."""
        ok = isinstance(ack, dict) and ack.get("ok") is True
        if event == "chat:join":
            chat_id = _field(data, "chat_id")
            feed = self._chats.get(chat_id) if chat_id else None
            if feed is None:
                return
            if not ok:
                if feed.joining:
                    del self._chats[chat_id]
                return
            messages = ack.get("messages") or []
            if feed.joining:  # the page is history, returned to the caller; live starts after
                since = _field(data, "since_seq")
                last = max((m["seq"] for m in messages), default=since or 0)
                feed.start(last)
                await self._offer(chat_id, feed, [], recovered=False)
            else:
                await self._offer(chat_id, feed, messages, recovered=True)
        elif not ok:
            return
        elif event == "chat:leave":
            self._chats.pop(_field(data, "chat_id"), None)
        elif event == "documents:join":
            document = ack["document"]
            self._documents[document["id"]] = document["version"]
        elif event == "documents:leave":
            self._documents.pop(_field(data, "document_id"), None)
        elif event == "documents:update":
            document = ack["document"]
            if document["id"] in self._documents:
                self._documents[document["id"]] = max(
                    self._documents[document["id"]], document["version"])

    async def _offer(self, chat_id: str, feed: ChatFeed, messages: list[Message],
                     recovered: bool) -> None:
        """Deliver what is now in order; fetch a gap with ``chat:history`` if one remains."""
        await self._release(feed.offer(messages, recovered))
        while self._chats.get(chat_id) is feed and (gap := feed.gap()) is not None:
            before_seq, limit = gap
            try:
                page = await self._call("chat:history",
                                        {"chat_id": chat_id, "before_seq": before_seq,
                                         "limit": limit})
            except CollabError:
                return  # held back; the recovery after the reconnect fills it
            if not page.get("ok") or not page["messages"]:
                return
            await self._release(feed.offer(page["messages"], recovered=True))

    async def _release(self, messages: list[tuple[Message, bool]]) -> None:
        for message, recovered in messages:
            payload: dict[str, Any] = {"message": message}
            if recovered:
                payload["recovered"] = True
            await self._deliver("chat:message", payload)

    # -- server events --------------------------------------------------------------

    def _on_sio_event(self, sio: socketio.AsyncClient, event: str, *args: Any) -> None:
        if sio is not self._sio:
            return
        data = args[0] if len(args) == 1 else list(args) if args else None
        self._queue.put_nowait(partial(self._server_event, event, data))

    async def _server_event(self, event: str, data: Any) -> None:
        """In the dispatcher: dedupe what the recovery already delivered, then deliver."""
        if event == "chat:message":
            message = _field(data, "message")
            feed = self._chats.get(_field(message, "chat_id"))
            if feed is not None:
                if feed.joining:
                    feed.offer([message], recovered=False)
                else:
                    await self._offer(message["chat_id"], feed, [message], recovered=False)
                return
        elif event == "documents:updated":
            document = _field(data, "document")
            document_id = _field(document, "id")
            if document_id in self._documents:
                if document["version"] <= self._documents[document_id]:
                    return  # seen already (delivered by the recovery, or our own update)
                self._documents[document_id] = document["version"]
        await self._deliver(event, data)

    # -- calls and the dispatcher ------------------------------------------------------

    async def _call(self, event: str, data: Any, deadline: float | None = None,
                    on_ack: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        """Emit and return the raw ack. Inside the dispatcher the ack settles directly
        (the dispatcher is busy waiting for it); elsewhere it goes through the queue."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.ack_timeout
        sio = self._sio
        if sio is None or not sio.connected or not self._online.is_set():
            raise CollabError(DISCONNECTED, "Not connected")
        fut: asyncio.Future = loop.create_future()
        direct = asyncio.current_task() is self._dispatcher

        def acked(*args: Any) -> None:
            ack = args[0] if args else None
            if fut.done():
                return
            if direct:
                fut.set_result(ack)
            else:
                self._queue.put_nowait(partial(self._settle, fut, ack, on_ack))

        self._pending[fut] = (sio, direct)
        log.debug("emit %s", event)  # not the data: auth:refresh carries a token
        try:
            try:
                await sio.emit(event, data, callback=acked)
            except socketio.exceptions.SocketIOError:
                raise CollabError(DISCONNECTED, "Not connected") from None
            try:
                ack = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise AckTimeout(f"No acknowledgement for {event!r} in time") from None
        finally:
            self._pending.pop(fut, None)
        if direct and on_ack is not None:
            await on_ack(ack)
        return ack

    async def _settle(self, fut: asyncio.Future, ack: Any,
                      on_ack: Callable[[Any], Awaitable[None]] | None) -> None:
        if fut.done():
            return  # timed out or lost meanwhile
        if on_ack is not None:
            await on_ack(ack)
        if not fut.done():
            fut.set_result(ack)

    async def _wait_online(self, deadline: float) -> None:
        if self._closed:
            raise CollabError(DISCONNECTED, "Not connected")
        if self._online.is_set():
            return
        waiters = [asyncio.ensure_future(self._online.wait()),
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
        if not self._online.is_set():
            raise AckTimeout("Not reconnected in time")

    async def _in_dispatcher(self, job: Job) -> Any:
        """Run ``job`` in the dispatcher, in turn with the events, and return its result."""
        if asyncio.current_task() is self._dispatcher:
            return await job()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                result = await job()
            except Exception as exc:  # noqa: BLE001 - handed to the waiter
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)

        self._queue.put_nowait(run)
        return await fut

    async def _dispatch(self, queue: asyncio.Queue[Job | None]) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            try:
                await job()
            except Exception:  # noqa: BLE001 - keep delivering
                log.exception("collab client: error while dispatching")

    async def _deliver(self, event: str, data: Any) -> None:
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(data)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                log.exception("collab client: %r handler failed", event)

    # -- token refresh --------------------------------------------------------------

    def _schedule_refresh(self, min_delay: float = 0.0) -> None:
        self._cancel_refresh()
        expires = _expiry(self._token)
        if self._token_provider is None or expires is None:
            return
        remaining = expires - time.time()
        if remaining <= 0:
            return
        delay = max(min_delay, remaining * REFRESH_AT)
        if delay < remaining:
            self._refresher = asyncio.create_task(self._refresh_after(delay))

    def _cancel_refresh(self) -> None:
        if self._refresher is not None and self._refresher is not asyncio.current_task():
            self._refresher.cancel()
        self._refresher = None

    async def _refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            token = await self._fresh_token()
            self._token = token  # a reconnect uses it even if the refresh fails
            ack = await self._call("auth:refresh", {"token": token})
        except CollabError as exc:
            if exc.code == DISCONNECTED:
                return  # the reconnect starts a new schedule
            log.warning("token refresh failed: %s %s", exc.code, exc.message)
            self._schedule_refresh(min_delay=1.0)
        except Exception as exc:  # noqa: BLE001 - a failing token_provider: try again later
            log.warning("token refresh failed: %r", exc)
            self._schedule_refresh(min_delay=1.0)
        else:
            if ack.get("ok"):
                self._schedule_refresh()
            else:  # refused: the server sent `error`, and will disconnect at expiry
                log.warning("auth:refresh refused: %s", ack.get("error"))


def _result(ack: Any) -> dict[str, Any]:
    if not isinstance(ack, dict) or "ok" not in ack:
        raise CollabError("INTERNAL_ERROR", "Malformed acknowledgement", {"ack": ack})
    if ack["ok"] is True:
        return {key: value for key, value in ack.items() if key != "ok"}
    raise CollabError.from_dict(ack.get("error"))


def _forgotten(ack: Any) -> bool:
    """A re-join refused for good: the room is gone or the user may no longer enter."""
    error = _field(ack, "error")
    return _field(ack, "ok") is False and _field(error, "code") in PERMANENT


def _refusal(data: Any, exc: Exception) -> CollabError:
    """``connect_error`` data (``{message, data: SocketError}``) as an exception."""
    if isinstance(data, dict):
        error = data.get("data") if isinstance(data.get("data"), dict) else data
        if "code" in error:
            return CollabError.from_dict(error)
    return CollabError(CONNECTION_FAILED, str(data or exc))


def _expiry(token: str | None) -> float | None:
    """The token's ``exp``, read without verifying: only to time the refresh."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


def _field(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None
