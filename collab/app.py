"""The Socket.IO side of the server: connections, dispatch, rooms and presence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, NoReturn

import socketio
from marshmallow import ValidationError

from .admin import instrument
from .auth import Identity, TokenVerifier, token_from_handshake
from .broadcast import BroadcasterFactory, Broadcasts, NodeHooks, open_broadcaster
from .broadcast.wire import Envelope
from .config import Settings
from .connection import Connection, spend
from .errors import (
    CollabError,
    ErrorCode,
    InvalidInput,
    RateLimited,
    Unauthorized,
)
from .handlers import EVENTS
from .handlers.context import Context
from .livedocs import LiveDocuments
from .logs import library_logger
from .membership import Membership
from .metrics import Metrics, TimedStore, disconnect_label
from .packet import MALFORMED_EVENT, CollabPacket
from .permissions import RoleCache
from .pipeline import current_turn
from .proxy import TrustedProxies, public_origin
from .ratelimit import TokenBucket
from .registry.base import Registry
from .rooms import LIVE, Room
from .sioserver import GuardedServer
from .store.base import Store
from .userlimits import UserLimits
from .yws import YjsEndpoint, YjsHandler, close_all

log = logging.getLogger("collab")

#: the longest an expiry timer sleeps (seconds); a later expiry is re-armed on waking
MAX_EXPIRY_DELAY = 24 * 3600.0
#: changes sent from the store after a gap in another node's broadcasts, at most (past
#: it, the oldest are not: those members join again, as after any long outage)
MAX_FILLED = 1000
#: the events whose handlers may overlap on one connection (collab/pipeline.py): a
#: message's commit is most of its time, and a poster has the next one ready
PIPELINED_EVENTS = frozenset({"chat:message"})


class CollabApp:
    """Owns the Socket.IO server and everything a connection touches."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        broadcaster: BroadcasterFactory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store: Store = TimedStore(store, self.metrics)  # type: ignore[assignment]
        self.raw_store = store
        self.registry = registry
        self.verifier = TokenVerifier(settings)
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.connections: dict[str, Connection] = {}
        self.user_limits = UserLimits(
            settings.max_connections_per_user,
            settings.user_rate_limit_per_second,
            settings.user_rate_limit_burst,
        )
        self._background: set[asyncio.Task] = set()
        if broadcaster is None:
            broadcaster = open_broadcaster("memory://", self.metrics)
        #: the client manager: this node's sockets, and the other nodes if there are any
        self.broadcaster = broadcaster(NodeHooks(
            room_position=self._room_position,
            revoked=self._revoked_elsewhere,
            resubscribed=self._recheck_access,
            observe=self._observe,
            asked=self._awareness_asked,
            missed=self._missed,
        ))
        self.sio = GuardedServer(
            async_mode="tornado",
            client_manager=self.broadcaster,
            direct=self.broadcaster.send_direct,
            pipelined=PIPELINED_EVENTS,
            pipeline_depth=settings.max_pipelined_messages if store.writes_in_call_order
            else 1,
            serializer=CollabPacket,
            # one connection's events run in order (its chat messages overlap in the
            # store, in their order: collab/pipeline.py); connections run concurrently
            async_handlers=False,
            cors_allowed_origins=self.origin_allowed,
            max_http_buffer_size=settings.max_packet_bytes,
            # (for our Engine.IO server class, collab/sioserver.py)
            max_queued_bytes=settings.max_send_buffer_bytes,
            on_slow_consumer=self.metrics.slow_consumers_closed.inc,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            logger=library_logger("socketio.server"),
            engineio_logger=library_logger("engineio.server"),
        )
        #: room broadcasts, stored items in position order (what handlers publish through)
        self.broadcasts = Broadcasts(self.broadcaster, self.metrics)
        #: the live documents loaded on this node
        self.documents = LiveDocuments(self.store, settings, self._hosts_document,
                                       expired=self._awareness_expired)
        #: this node's y-websocket sockets by key: the document rooms' outside members
        self.yjs_sockets: dict[str, YjsHandler] = {}
        self.membership = Membership(self.sio, self.broadcaster, self.broadcasts, registry,
                                     self.store, self.connections,
                                     on_leave=self._left_document, outside=self.yjs_sockets)
        #: what the y-websocket endpoint's handlers share (collab/yws.py)
        self.yjs = YjsEndpoint(
            settings=settings, store=self.store, verifier=self.verifier,
            documents=self.documents, broadcasts=self.broadcasts, membership=self.membership,
            user_limits=self.user_limits, metrics=self.metrics,
            origin_allowed=self.request_origin_allowed, sockets=self.yjs_sockets)
        self.metrics.count_rooms(self.membership.local_rooms)
        self.metrics.documents_loaded.set_function(lambda: len(self.documents))
        self.context = Context(
            settings=settings, store=self.store, broadcasts=self.broadcasts,
            rooms=self.membership, documents=self.documents, verifier=self.verifier,
            renew=self.renew,
        )
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_unknown)
        for event, (schema, handler) in EVENTS.items():
            self.sio.on(event, self._dispatcher(event, schema, handler))
        # several nodes: presence changes the registry finds by itself (a node died)
        registry.on_presence = self.membership.announce_presence
        #: the Socket.IO Admin UI's instrumentation, when configured
        self.admin = instrument(self.sio, self.verifier, settings.admin_ui_read_only) \
            if settings.admin_ui else None

    # -- origins -----------------------------------------------------------

    def origin_allowed(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        """The server's own origin (as a trusted proxy forwarded it), or a configured one."""
        # Engine.IO's environ fakes REMOTE_ADDR and copies X-Forwarded-Proto into
        # wsgi.url_scheme for everyone; the Tornado request knows the real peer.
        handler = (environ or {}).get("tornado.handler")
        return self.request_origin_allowed(origin, handler.request if handler else None)

    def request_origin_allowed(self, origin: str | None, request: Any) -> bool:
        """:meth:`origin_allowed` for a Tornado request (also the y-websocket upgrade's)."""
        if not origin:
            return True
        if origin in self.settings.cors_origins or "*" in self.settings.cors_origins:
            return True
        return request is not None and origin == public_origin(request, self.proxies)

    # -- connection lifecycle ---------------------------------------------

    async def _on_connect(self, sid: str, environ: Any = None, auth: Any = None) -> Any:
        if sid in self.connections:  # a client emitting "connect" as an event
            return await self._fail(sid, "connect", InvalidInput("Unknown event 'connect'"))
        # Every way out of here is an answer: a refusal is what lets python-socketio
        # forget the pending connection (an exception would leave it behind).
        held = None  # the user whose slot this handshake holds until it is admitted
        admitted = False
        try:
            identity = self.verifier.verify(token_from_handshake(environ or {}, auth))
            share = self.user_limits.acquire(identity.user_id)
            held = identity.user_id
            await self.registry.add_connection(sid, identity.user_id)
            if self.sio.manager.eio_sid_from_sid(sid, "/") not in self.sio.environ:
                # the client left while the registry was written: its disconnect
                # has run and found nothing to remove, so undo the entry here
                await self.registry.remove_connection(sid)
                log.debug("%s left during its handshake", sid)
                return False
            await self.sio.save_session(sid, identity.to_session())
            admitted = True
        except CollabError as exc:
            self._refuse(sid, exc)
        except Exception as exc:  # noqa: BLE001 - the client still gets its connect_error
            error_id = uuid.uuid4().hex[:16]
            log.error("internal error %s connecting %s", error_id, sid, exc_info=exc)
            with contextlib.suppress(Exception):
                await self.registry.remove_connection(sid)
            self._refuse(sid, CollabError(
                ErrorCode.INTERNAL_ERROR, "Internal server error", {"error_id": error_id}))
        finally:
            if held is not None and not admitted:
                self.user_limits.release(held)
        rate = self.settings.rate_limit_per_second
        bucket = TokenBucket(rate, self.settings.rate_limit_burst) if rate > 0 else None
        conn = Connection(sid, identity, bucket, share, RoleCache(self._keep_document_roles()))
        self.connections[sid] = conn
        self._schedule_expiry(conn)
        self.metrics.connections.inc()
        log.debug("connected %s as %s", sid, identity.user_id)
        return True

    def _keep_document_roles(self) -> bool:
        """Whether a connection may keep its document roles between events: only where
        every change of one is seen here (no other nodes) and read back current."""
        return self.broadcaster.alone and self.store.role_reads_current

    def _refuse(self, sid: str, exc: CollabError) -> NoReturn:
        """Refuse a handshake: ``connect_error`` with ``exc`` as its data."""
        self.metrics.connects_refused.labels(exc.code.value).inc()
        log.debug("refused %s: %s", sid, exc.message)
        raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None

    async def _on_disconnect(self, sid: str, reason: Any = None, *_: Any) -> Any:
        if self.sio.manager.is_connected(sid, "/"):  # a client emitting "disconnect"
            return await self._fail(sid, "disconnect", InvalidInput("Unknown event 'disconnect'"))
        conn = self.connections.pop(sid, None)
        if conn is None:
            return None
        if conn.expiry is not None:
            conn.expiry.cancel()
        self.user_limits.release(conn.user_id)
        self.metrics.connections.dec()
        self.metrics.disconnects.labels(disconnect_label(reason)).inc()
        try:
            await self.membership.disconnecting(sid)
        except Exception:  # noqa: BLE001 - the disconnect goes on
            log.exception("telling the rooms of %s that it left failed", sid)
        await self.membership.disconnected(sid)
        log.debug("disconnected %s (%s)", sid, reason)
        return None

    def renew(self, conn: Connection, identity: Identity) -> None:
        """Swap in a refreshed token's identity and move the expiry timer."""
        conn.identity = identity
        conn.roles.clear()  # (what the old token was granted is read again)
        self._schedule_expiry(conn)

    def _schedule_expiry(self, conn: Connection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
        delay = conn.identity.expires_at + self.settings.jwt_leeway - time.time()
        loop = asyncio.get_running_loop()
        # a token may be valid for centuries: wake at least daily, _expire re-arms
        delay = min(max(0.0, delay), MAX_EXPIRY_DELAY)
        conn.expiry = loop.call_later(delay, self._start_expire, conn)

    def _start_expire(self, conn: Connection) -> None:
        task = asyncio.ensure_future(self._expire(conn))
        self._background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._background.discard)

    async def _expire(self, conn: Connection) -> None:
        if self.connections.get(conn.sid) is not conn:
            return
        if conn.identity.expires_at + self.settings.jwt_leeway > time.time():
            self._schedule_expiry(conn)  # refreshed, or the timer ran early
            return
        err = Unauthorized("Token has expired; reconnect with a fresh token")
        try:
            await self.sio.emit("error", err.to_dict(), to=conn.sid)
            await self.sio.disconnect(conn.sid)
        except Exception:  # noqa: BLE001 - nobody awaits this task
            log.exception("error disconnecting %s after its token expired", conn.sid)

    # -- what the broadcaster asks of this node ----------------------------

    async def _room_position(self, room: str) -> int | None:
        return await self.membership.room_position(room)

    async def _revoked_elsewhere(self, room: str, user_id: str) -> None:
        await self.membership.revoked_elsewhere(room, user_id)

    async def _recheck_access(self) -> None:
        await self.membership.recheck_access()

    async def _observe(self, name: str, envelope: Envelope) -> None:
        """Another node's broadcast to a live document room: this node's copy and
        awareness states follow it before the members here get it."""
        room = Room.parse(name)
        if room is None or not envelope.attachments:
            return
        if envelope.event == "documents:yupdate" and envelope.position is not None:
            await self.documents.observed(room.id, envelope.position, envelope.attachments[0])
        elif envelope.event == "documents:awareness":
            try:  # (the states of that node's connections, kept for this node's joiners)
                self.documents.awareness(room.id).apply(
                    ("node", envelope.host), envelope.attachments[0],
                    user=envelope.user_id or None, relayed=True)
            except CollabError:
                pass  # that node accepted it under its own bounds; relayed all the same

    async def _awareness_asked(self, name: str) -> None:
        """Another node now has live members of a document: send it the states of this
        node's members there (the others have them: they are skipped)."""
        room = Room.parse(name)
        if room is None or room.mode != LIVE or not self.documents.has_awareness(room.id):
            return
        here = self.broadcaster.local_members(name)
        announced = self.documents.awareness(room.id).encode_announced(here)
        for user_id, states in announced.items():
            await self.broadcasts.send(room, "documents:awareness",
                                       {"document_id": room.id, "update": states},
                                       skip_sid=here, sender=user_id or "")

    async def _missed(self, name: str, positions: list[int]) -> None:
        """Another node's changes whose broadcasts never came: a live member cannot do
        without them (later Yjs updates build on them), so they come from the store.
        Plain members get the whole content with the next change."""
        room = Room.parse(name)
        if room is None or room.kind != "document" or room.mode != LIVE:
            return
        wanted = set(positions[-MAX_FILLED:])
        updates = await self.store.document_updates(room.id, min(wanted) - 1,
                                                    up_to=max(wanted))
        for update in updates:
            if update.version in wanted and update.update:
                # (the copy first, as for every change delivered here: a join reading it
                # meanwhile is skipped by the delivery, so must have it in its answer)
                await self.documents.observed(room.id, update.version, update.update)
                await self.broadcasts.send_here(room, "documents:yupdate", {
                    "document_id": room.id, "update": update.update,
                    "version": update.version, "user_id": update.user_id,
                }, position=update.version)

    # -- live documents ----------------------------------------------------

    def _hosts_document(self, document_id: str) -> bool:
        return self.broadcaster.hosts(Room.document(document_id).name)

    async def _left_document(self, sid: str, sub: Room) -> None:
        """``sid`` left a document's sub-room: the live members lose its cursors at once."""
        if sub.mode != LIVE:
            return
        removal = self.documents.awareness(sub.id).remove_connection(sid)
        if removal is not None:
            await self.broadcasts.send(sub, "documents:awareness",
                                       {"document_id": sub.id, "update": removal})

    async def _awareness_expired(self, document_id: str, removal: bytes) -> None:
        """States nobody renewed in time: this node's live members lose them (every node
        finds its own expired states, so this goes to no other node)."""
        await self.broadcasts.send_here(Room.document(document_id).live, "documents:awareness",
                                        {"document_id": document_id, "update": removal})

    # -- dispatch ----------------------------------------------------------

    def _dispatcher(self, event: str, schema: Any, handler: Any) -> Any:
        events = self.metrics.events
        ok_counter = events.labels(event, "ok")
        latency = self.metrics.handler_latency.labels(event)

        async def dispatch(sid: str, *args: Any) -> dict[str, Any]:
            start = time.perf_counter()
            turn = current_turn()  # (a pipelined event's: it answers in its turn)
            conn = self.connections.get(sid)
            try:
                if conn is None:
                    raise Unauthorized("Not connected")
                spend(conn)
                if conn.identity.expires_at + self.settings.jwt_leeway <= time.time():
                    # the expiry timer is due and will disconnect; refuse meanwhile
                    raise Unauthorized("Token has expired")
                try:
                    data = schema.load(args[0] if args else {})
                except ValidationError as exc:
                    raise InvalidInput("Invalid payload", exc.messages) from None
                except RecursionError:
                    raise InvalidInput("Payload is nested too deeply") from None
                result = await handler(self.context, conn, data)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an ack
                await turn.wait_to_answer()
                return await self._fail(sid, event, exc, start)
            ok_counter.inc()
            latency.observe(time.perf_counter() - start)  # (not the wait for its turn)
            await turn.wait_to_answer()
            return {"ok": True, **result}

        return dispatch

    async def _on_unknown(self, event: Any, sid: str, *args: Any) -> dict[str, Any]:
        conn = self.connections.get(sid)
        if conn is not None:  # unknown and malformed events count against the limits too
            try:
                spend(conn)
            except RateLimited as exc:
                return await self._fail(sid, "unknown", exc)
        if event == MALFORMED_EVENT:
            reason = args[0] if args else "malformed payload"
            return await self._fail(sid, "malformed", InvalidInput(f"Invalid packet: {reason}"))
        return await self._fail(sid, "unknown", InvalidInput(f"Unknown event {event!r:.140}"))

    async def _fail(
        self, sid: str, event: str, exc: BaseException, start: float | None = None
    ) -> dict[str, Any]:
        """Answer a failure: the ack body, plus an ``error`` event to the sender."""
        if not isinstance(exc, CollabError):
            error_id = uuid.uuid4().hex[:16]
            log.error("internal error %s handling %s from %s", error_id, event, sid,
                      exc_info=exc)
            exc = CollabError(
                ErrorCode.INTERNAL_ERROR, "Internal server error", {"error_id": error_id}
            )
        body = exc.to_dict()
        self.metrics.events.labels(event, exc.code.value).inc()
        if start is not None:
            self.metrics.handler_latency.labels(event).observe(time.perf_counter() - start)
        await self.sio.emit("error", body, to=sid)
        return {"ok": False, "error": body}

    # -- shutdown ----------------------------------------------------------

    async def disconnect_all(self) -> None:
        for sid in list(self.connections):
            try:
                await self.sio.disconnect(sid)
            except Exception:  # noqa: BLE001 - keep closing the others
                log.exception("error disconnecting %s", sid)
        # (Tornado's close_all_connections does not reach upgraded, detached streams)
        await close_all(self.yjs_sockets, self.settings.shutdown_timeout)
