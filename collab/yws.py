"""The y-websocket endpoint (PROTOCOL v2): ``GET /yjs/<document_id>`` upgrades to a
WebSocket speaking the standard Yjs sync and awareness protocol (y-protocols), so the
stock ``y-websocket`` provider and every Yjs editor binding work unchanged.

Each socket is one live member of one document, beside the Socket.IO ones: an
*outside member* of the document's room and live sub-room (collab/membership.py),
so every change announced to the live members reaches it at the same point and in
the same version order, on this node and from the others. What it sends goes the
way of ``documents:yupdate`` and ``documents:awareness``: an editor's update is one
version through :meth:`LiveDocuments.change <collab.livedocs.LiveDocuments.change>`,
stored before it is relayed; a viewer's is never applied, stored or relayed.

Refused before the upgrade, with a ``SocketError`` JSON body: a foreign ``Origin``
403, a bad token 401, no role on the document (or no such document) 404, a user at
``max_connections_per_user`` 429, the store unreachable 503. Later endings are close
codes; y-websocket 3 stops reconnecting on 4400-4499 (reconnecting cannot help) and
retries on any other (see :data:`CLOSE_CODES`).

The token usually comes in the URL, so nothing here logs the request's URL (and
collab/logs.py masks credential parameters in every line Tornado writes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import tornado.websocket
from pycrdt import YMessageType, YSyncMessageType, create_awareness_message, create_update_message

from .auth import Identity, TokenVerifier
from .broadcast import Broadcasts, cap_send_buffer, write_bounded
from .config import Settings
from .errors import (
    CollabError,
    ErrorCode,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TooManyConnections,
    Unauthorized,
)
from .handlers.documents import announcer
from .lib0 import Lib0Error, Reader, var_string, var_uint
from .livedocs import LiveDocuments
from .membership import Membership
from .metrics import Metrics
from .permissions import require_document_role
from .ratelimit import TokenBucket
from .rooms import Room
from .schemas import ID_PATTERN
from .store.base import Store
from .userlimits import UserLimits, UserShare

log = logging.getLogger("collab.yws")

#: y-protocols message types the provider sends besides sync and awareness
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3
#: y-protocols/auth: the one auth message there is
PERMISSION_DENIED = 0

#: the longest an expiry timer sleeps (seconds); a later expiry is re-armed on waking
MAX_EXPIRY_DELAY = 24 * 3600.0
#: RFC 6455 lets a close reason take 123 bytes
MAX_REASON_BYTES = 123
#: a document id, as every event validates it (collab/schemas.py)
DOCUMENT_ID = re.compile(ID_PATTERN)


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """How a socket ends: a close code and its reason."""

    code: int
    reason: str


#: the close code of each refusal after the upgrade; 44xx: y-websocket does not reconnect
CLOSE_CODES = {
    ErrorCode.UNAUTHORIZED: 4401,  # the token expired: reconnect with a fresh one
    ErrorCode.PERMISSION_DENIED: 4403,  # access revoked
    ErrorCode.NOT_FOUND: 4404,  # the document is gone, or the role
    ErrorCode.INVALID_INPUT: 4400,  # a message that does not decode or integrate
    ErrorCode.PAYLOAD_TOO_LARGE: 4413,  # over the content or state limit
    ErrorCode.UNAVAILABLE: 1013,  # try again later: the provider resyncs on reconnect
    ErrorCode.INTERNAL_ERROR: 1011,
}

#: the HTTP status of each refusal at the upgrade
HTTP_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}


def closing(exc: CollabError) -> Close:
    reason = exc.message.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")
    return Close(CLOSE_CODES.get(exc.code, 1011), reason)


def sync_message(step: YSyncMessageType, payload: bytes) -> bytes:
    """A sync step 1 (a state vector) or 2 (an update); pycrdt builds these only from a
    ``Doc``, and the document here is a :class:`~collab.ydoc.LiveDocument`."""
    return var_uint(YMessageType.SYNC) + var_uint(step) + var_uint(len(payload)) + payload


def permission_denied_message(reason: str) -> bytes:
    """y-protocols/auth ``permissionDenied``: the provider logs it as a warning."""
    return var_uint(MESSAGE_AUTH) + var_uint(PERMISSION_DENIED) + var_string(reason)


@dataclasses.dataclass(frozen=True)
class YjsEndpoint:
    """What this node's y-websocket sockets share (given to each handler)."""

    settings: Settings
    store: Store
    verifier: TokenVerifier
    documents: LiveDocuments
    broadcasts: Broadcasts
    membership: Membership
    user_limits: UserLimits
    metrics: Metrics
    #: ``(origin, request) -> allowed``: the Socket.IO origin policy
    origin_allowed: Callable[[str | None, Any], bool]
    #: this node's open sockets by key (the membership's outside members)
    sockets: dict[str, YjsHandler]


#: how a socket ends when its node shuts down: the provider reconnects (to another node)
GOING_AWAY = Close(1001, "Server shutting down")


async def close_all(sockets: dict[str, YjsHandler], timeout: float) -> None:
    """Close every socket and wait (up to ``timeout``) until each has left its rooms."""
    waiting = list(sockets.values())
    for socket in waiting:
        socket.end(GOING_AWAY)
    if waiting:
        await asyncio.wait([asyncio.ensure_future(s.left.wait()) for s in waiting],
                           timeout=timeout)


class YjsHandler(tornado.websocket.WebSocketHandler):
    """One y-websocket socket: a live member of one document."""

    def initialize(self, endpoint: YjsEndpoint) -> None:
        self.endpoint = endpoint
        #: this member's key in its rooms (":" never occurs in a Socket.IO sid)
        self.key = "yjs:" + uuid.uuid4().hex
        self.identity = Identity("", "", (), 0.0)
        self.document_id = ""
        self.room = Room.document("")
        #: a viewer's socket (or an editor's downgraded since): its updates are ignored
        self.read_only = True
        self._share: UserShare | None = None
        self._bucket: TokenBucket | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._opened = False
        #: set once open() is over: a close during it waits for the entry to finish
        self._open_done = asyncio.Event()
        self._ended: asyncio.Future[None] | None = None
        #: set once the socket has left its rooms (for a shutdown to wait on)
        self.left = asyncio.Event()
        self._told_read_only = False

    # -- the upgrade -------------------------------------------------------

    def check_origin(self, origin: str) -> bool:
        return True  # checked in get(), before the token, with the Socket.IO policy

    async def get(self, *args: Any, **kwargs: Any) -> None:
        document_id = args[0] if args else ""
        endpoint = self.endpoint
        try:
            if not endpoint.origin_allowed(self.request.headers.get("Origin"), self.request):
                raise PermissionDenied("This origin is not allowed")
            identity = endpoint.verifier.verify(self._token())
            if DOCUMENT_ID.match(document_id) is None:
                raise NotFound(f"Document {document_id[:140]!r} not found")
            role = await require_document_role(endpoint.store, identity, document_id, "viewer")
            self._share = endpoint.user_limits.acquire(identity.user_id)
        except CollabError as exc:
            self._refuse(exc)
            return
        except Exception as exc:  # noqa: BLE001 - the client still gets its answer
            error_id = uuid.uuid4().hex[:16]
            log.error("internal error %s at a y-websocket upgrade", error_id, exc_info=exc)
            self._refuse(CollabError(ErrorCode.INTERNAL_ERROR, "Internal server error",
                                     {"error_id": error_id}))
            return
        self.identity = identity
        self.document_id = document_id
        self.room = Room.document(document_id)
        self.read_only = role == "viewer"
        rate = endpoint.settings.rate_limit_per_second
        self._bucket = TokenBucket(rate, endpoint.settings.rate_limit_burst) if rate else None
        try:
            await super().get(*args, **kwargs)
        finally:
            if not self._opened:  # not upgraded after all (a plain GET: 400)
                self._release()

    def _token(self) -> str | None:
        token = self.get_query_argument("token", None)
        if token:
            return token
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None

    def _refuse(self, exc: CollabError) -> None:
        self.endpoint.metrics.yjs_refused.labels(exc.code.value).inc()
        self.set_status(HTTP_STATUS.get(exc.code, 400))
        if isinstance(exc, TooManyConnections):
            self.set_header("Retry-After", str(TooManyConnections.RETRY_AFTER_MS // 1000))
        if exc.code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="collab"')
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(exc.to_dict()))

    # -- the socket's life -------------------------------------------------

    @property
    def ping_interval(self) -> float | None:
        return self.endpoint.settings.ping_interval  # (as Engine.IO pings: dead peers go)

    @property
    def ping_timeout(self) -> float | None:
        return self.endpoint.settings.ping_timeout

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self._opened = True
        endpoint = self.endpoint
        cap_send_buffer(self, endpoint.settings.max_send_buffer_bytes)
        endpoint.sockets[self.key] = self
        endpoint.metrics.yjs_connections.inc()
        self._schedule_expiry()
        try:
            # in the room before reading the document: no change can fall between
            await endpoint.membership.enter_outside(self, self.room)
            if endpoint.membership.alone_in(self.key, self.room.live):
                # the first live member here: the other nodes' cursors, set before this
                # node heard the room, are sent again (collab/app.py)
                await endpoint.broadcasts.ask_awareness(self.room.live)
            # again, now that it is in: a revocation since the upgrade did not find it
            role = await require_document_role(endpoint.store, self.identity,
                                               self.document_id, "viewer")
            self.read_only = role == "viewer"
            async with endpoint.documents.locked(self.document_id) as loaded:
                # everything stored so far, nothing unstored
                await endpoint.documents.catch_up(loaded)
                step1 = sync_message(YSyncMessageType.SYNC_STEP1, loaded.doc.state_vector())
            self._send(step1)
            states = endpoint.documents.awareness(self.document_id)
            if len(states):
                self._send(create_awareness_message(states.encode_all()))
        except Exception as exc:  # noqa: BLE001 - becomes a close code
            self._fail(exc, "opening")
        finally:
            self._open_done.set()

    async def on_message(self, message: str | bytes) -> None:
        if self.ws_connection is None:
            return  # closed meanwhile
        try:
            await self._spend()
            if self.ws_connection is None:
                return  # closed while it waited (revoked, expired): nothing more from it
            if isinstance(message, str):
                raise InvalidInput("y-websocket messages are binary")
            await self._handle(message)
        except Exception as exc:  # noqa: BLE001 - becomes a close code
            self._fail(exc, "handling a message")

    def on_close(self) -> None:
        # (Tornado calls this for a client that leaves during the upgrade too)
        if self._opened and self._ended is None:
            self._ended = asyncio.ensure_future(self._leave())

    async def _leave(self) -> None:
        # (the socket stays in endpoint.sockets until this is over: that reference is
        # what keeps this task, which only the handler holds, from being collected)
        endpoint = self.endpoint
        try:
            await self._open_done.wait()
            if self._expiry is not None:
                self._expiry.cancel()
            self._release()
            await endpoint.membership.leave_outside(self, self.room)
        except Exception:  # noqa: BLE001 - nobody awaits this task
            log.exception("telling document %s that a y-websocket socket left failed",
                          self.document_id)
        finally:
            endpoint.sockets.pop(self.key, None)
            endpoint.metrics.yjs_connections.dec()
            self.left.set()

    def _release(self) -> None:
        share, self._share = self._share, None
        if share is not None:
            self.endpoint.user_limits.release(self.identity.user_id)

    def end(self, close: Close) -> None:
        """Close the socket with ``close``'s code and reason (once)."""
        if self.ws_connection is not None:
            self.close(close.code, close.reason)

    def _fail(self, exc: BaseException, doing: str) -> None:
        if self.ws_connection is None:
            return  # closed already
        if not isinstance(exc, CollabError):
            error_id = uuid.uuid4().hex[:16]
            log.error("internal error %s %s on y-websocket document %s", error_id, doing,
                      self.document_id, exc_info=exc)
            exc = CollabError(ErrorCode.INTERNAL_ERROR, f"Internal server error {error_id}")
        self.endpoint.metrics.yjs_closed.labels(exc.code.value).inc()
        self.end(closing(exc))

    # -- expiry, revocation ------------------------------------------------

    def _schedule_expiry(self) -> None:
        delay = self.identity.expires_at + self.endpoint.settings.jwt_leeway - time.time()
        delay = min(max(0.0, delay), MAX_EXPIRY_DELAY)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        if self.identity.expires_at + self.endpoint.settings.jwt_leeway > time.time():
            self._schedule_expiry()  # the timer ran early, or a daily wake-up
            return
        self._fail(Unauthorized("Token has expired; reconnect with a fresh token"), "")

    def revoked(self, message: str) -> None:
        """Access to the document was removed (the membership has taken it out)."""
        self._fail(PermissionDenied(message), "")

    # -- what the room sends it ----------------------------------------------

    def receive(self, room: str, event: str, data: Any) -> None:
        """A broadcast to the document's rooms: changes and awareness go out as
        y-protocols messages; presence and the plain members' events are not for it."""
        if event == "documents:yupdate":
            self._send(create_update_message(data["update"]))
        elif event == "documents:awareness":
            self._send(create_awareness_message(data["update"]))

    def _send(self, message: bytes) -> None:
        write_bounded(self, message, True, self.endpoint.metrics.slow_consumers_closed.inc)

    # -- what it sends -------------------------------------------------------

    async def _spend(self) -> None:
        """One message from the socket's and its user's budgets. An empty bucket waits
        rather than refuses: no y-websocket message may be dropped (the provider would
        never resend it), and Tornado reads nothing more meanwhile, so a fast sender
        is slowed down by TCP itself."""
        for bucket in (self._bucket, self._share.bucket if self._share else None):
            while bucket is not None and (wait_ms := bucket.take()):
                await asyncio.sleep(wait_ms / 1000)

    async def _handle(self, message: bytes) -> None:
        reader = Reader(message)
        try:
            kind = reader.var_uint()
            if kind == YMessageType.SYNC:
                step = reader.var_uint()
                payload = reader.var_bytes()
            elif kind == YMessageType.AWARENESS:
                payload = reader.var_bytes()
            elif kind not in (MESSAGE_AUTH, MESSAGE_QUERY_AWARENESS):
                raise InvalidInput(f"Unknown y-websocket message type {kind}")
            if kind != MESSAGE_AUTH:  # (a client has nothing to say in one: not read)
                reader.end()
        except Lib0Error as exc:
            raise InvalidInput(f"y-websocket message cannot be decoded: {exc}") from None
        if kind == YMessageType.SYNC:
            await self._sync(step, payload)
        elif kind == YMessageType.AWARENESS:
            await self._awareness(payload)
        elif kind == MESSAGE_QUERY_AWARENESS:
            states = self.endpoint.documents.awareness(self.document_id)
            self._send(create_awareness_message(states.encode_all()))

    async def _sync(self, step: int, payload: bytes) -> None:
        documents = self.endpoint.documents
        if step == YSyncMessageType.SYNC_STEP1:  # the client's state vector: what it lacks
            async with documents.locked(self.document_id) as loaded:
                # (nothing the store has not taken yet)
                await documents.catch_up(loaded)
                reply = sync_message(YSyncMessageType.SYNC_STEP2,
                                     loaded.doc.diff(payload))
            self._send(reply)
        elif step in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            await self._update(payload, edited=step == YSyncMessageType.SYNC_UPDATE)
        else:
            raise InvalidInput(f"Unknown sync message type {step}")

    async def _update(self, update: bytes, *, edited: bool) -> None:
        """An update from the client: ``edited`` for a local edit, else its sync step 2
        (what it has that the server's state vector lacks, plus every deletion it knows,
        so rarely empty even when it brings nothing new)."""
        if update == b"\x00\x00":
            return  # nothing in it (a sync step 2 of a client with nothing new)
        endpoint = self.endpoint
        if not self.read_only:
            try:  # a revoked or downgraded editor's next update is refused
                await require_document_role(endpoint.store, self.identity, self.document_id,
                                            "editor")
            except PermissionDenied:
                self.read_only = True
        if self.read_only:
            # never applied, stored or relayed; told once, for an edit (a reconnecting
            # viewer's sync step 2 repeats deletions the document has: no warning for it)
            if edited and not self._told_read_only:
                self._told_read_only = True
                self._send(permission_denied_message(
                    "Read-only: you are a viewer of this document; updates are ignored"))
            return
        await endpoint.documents.change(
            self.document_id, lambda doc: doc.apply(update), self.identity.user_id,
            announce=announcer(endpoint.broadcasts, self.document_id, self.identity.user_id,
                               self.key))

    async def _awareness(self, update: bytes) -> None:
        accepted = self.endpoint.documents.awareness(self.document_id).apply(
            self.key, update, user=self.identity.user_id)
        if accepted is not None:
            # back to the sender too, as y-websocket's own server does: a provider that
            # hears nothing for 30 s takes its connection for dead, and its own state's
            # renewal every 15 s is what a lone client hears
            await self.endpoint.broadcasts.send(
                self.room.live, "documents:awareness",
                {"document_id": self.document_id, "update": accepted},
                sender=self.identity.user_id)

