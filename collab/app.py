"""The Socket.IO side of the server: connections, dispatch, rooms and presence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import socketio
from marshmallow import ValidationError

from .auth import Identity, TokenVerifier, token_from_handshake
from .config import Settings
from .errors import (
    CollabError,
    ErrorCode,
    InvalidInput,
    PermissionDenied,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from .handlers import EVENTS
from .logs import library_logger
from .metrics import Metrics, TimedStore, disconnect_label
from .packet import MALFORMED_EVENT, CollabPacket
from .proxy import TrustedProxies, public_origin
from .ratelimit import TokenBucket
from .registry.base import Registry
from .rooms import KINDS, Room
from .sequencer import Sequencer
from .sioserver import GuardedServer
from .store.base import Store
from .userlimits import UserLimits, UserShare

log = logging.getLogger("collab")

#: the longest an expiry timer sleeps (seconds); a later expiry is re-armed on waking
MAX_EXPIRY_DELAY = 24 * 3600.0


@dataclasses.dataclass(eq=False)
class Connection:
    """What the server keeps for one live Socket.IO connection."""

    sid: str
    identity: Identity
    bucket: TokenBucket | None
    #: this user's connection count and shared event bucket on this node
    user: UserShare
    expiry: asyncio.TimerHandle | None = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id


def spend(conn: Connection) -> None:
    """Take one event from the connection's bucket and its user's; :class:`RateLimited`
    when either is empty."""
    if conn.bucket is not None:
        wait_ms = conn.bucket.take()
        if wait_ms:
            raise RateLimited(wait_ms)
    if conn.user.bucket is not None:  # all of this user's connections
        wait_ms = conn.user.bucket.take()
        if wait_ms:
            raise RateLimited(wait_ms, "Too many events from this user; slow down")


class CollabApp:
    """Owns the Socket.IO server and everything a connection touches."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        client_manager: socketio.AsyncManager | None = None,
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
        #: per room: chat messages leave in seq order, document updates in version
        #: order, while the store calls behind them overlap
        self.room_order = Sequencer()
        self.sio = GuardedServer(
            async_mode="tornado",
            client_manager=client_manager,
            serializer=CollabPacket,
            # one connection's events run in order; connections run concurrently
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
        self.metrics.count_rooms(self.local_rooms)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_unknown)
        for event, (schema, handler) in EVENTS.items():
            self.sio.on(event, self._dispatcher(event, schema, handler))
        # several nodes: presence changes the registry finds by itself, and where
        # a room's ordered broadcasts start (see collab/registry/pubsub.py)
        registry.on_presence = self.announce_presence
        #: the pub/sub manager when broadcasts cross nodes (collab/registry/pubsub.py)
        self.cluster: Any = None
        if hasattr(client_manager, "room_position"):
            self.cluster = client_manager
            client_manager.room_position = self.room_position
            client_manager.on_revoke = self._revoked_elsewhere
            client_manager.on_resubscribed = self.recheck_access

    # -- origins -----------------------------------------------------------

    def origin_allowed(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        """The server's own origin (as a trusted proxy forwarded it), or a configured one."""
        if not origin:
            return True
        if origin in self.settings.cors_origins or "*" in self.settings.cors_origins:
            return True
        # Engine.IO's environ fakes REMOTE_ADDR and copies X-Forwarded-Proto into
        # wsgi.url_scheme for everyone; the Tornado request knows the real peer.
        handler = (environ or {}).get("tornado.handler")
        if handler is None:
            return False
        return origin == public_origin(handler.request, self.proxies)

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
        conn = Connection(sid, identity, bucket, share)
        self.connections[sid] = conn
        self._schedule_expiry(conn)
        self.metrics.connections.inc()
        log.debug("connected %s as %s", sid, identity.user_id)
        return True

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
            gone = await self.registry.remove_connection(sid)
        except CollabError:
            log.warning("registry unavailable while removing %s", sid)
            return None
        for name, user_id in gone:
            if (room := Room.parse(name)) is not None:
                await self.broadcast("user:left", room.presence(user_id), room)
        log.debug("disconnected %s (%s)", sid, reason)
        return None

    def renew(self, conn: Connection, identity: Identity) -> None:
        """Swap in a refreshed token's identity and move the expiry timer."""
        conn.identity = identity
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

    # -- rooms and presence ------------------------------------------------

    async def join_room(
        self, conn: Connection, room: Room, load: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Enter a room, then ``load`` what the join returns; undo the entry if that fails.

        Entering before loading means no broadcast can fall between the two.
        The user is announced only once the join has succeeded, and only if
        this is their first connection in the room.
        """
        rejoin = room.name in self.sio.rooms(conn.sid)
        await self.sio.enter_room(conn.sid, room.name)
        try:
            first = await self.registry.join(conn.sid, room.name)
            result = await load()
            users = await self.registry.room_users(room.name)
            if not self._in_room(conn.sid, room):
                # revoked meanwhile (``load`` checks the role again once the connection
                # is in the room, so a revocation cannot fall between check and entry)
                raise PermissionDenied(f"Access was revoked while joining {room.name!r}")
        except BaseException:
            if not rejoin or not self._in_room(conn.sid, room):
                await self.sio.leave_room(conn.sid, room.name)
                with contextlib.suppress(CollabError):
                    await self.registry.leave(conn.sid, room.name)
            raise
        if first:
            await self.broadcast(
                "user:joined", room.presence(conn.user_id), room, skip_sid=conn.sid
            )
        return {**result, "users": users}

    async def announce_presence(
        self, event: str, room: str, user_id: str, skip_sids: list[str] | None = None
    ) -> None:
        """Send ``user:joined`` / ``user:left`` for a change no event caused (a node died)."""
        if (parsed := Room.parse(room)) is not None:
            await self.broadcast(
                event, parsed.presence(user_id), parsed, skip_sid=skip_sids or None
            )

    async def room_position(self, room: str) -> int | None:
        """A chat's newest seq or a document's version: where its broadcasts stand."""
        parsed = Room.parse(room)
        if parsed is None:
            return None
        if parsed.kind == "chat":
            latest, _ = await self.store.messages_before(parsed.id, None, 1)
            return latest[-1]["seq"] if latest else 0
        document = await self.store.get_document(parsed.id)
        return document["version"] if document else None

    async def leave_room(self, conn: Connection, room: Room) -> None:
        gone = await self.registry.leave(conn.sid, room.name)
        await self.sio.leave_room(conn.sid, room.name)
        if gone:
            await self.broadcast("user:left", room.presence(conn.user_id), room)

    async def broadcast(self, event: str, data: Any, room: Room, skip_sid: Any = None) -> None:
        """Send ``event`` to everyone in ``room``, on every node; counted once, here."""
        self.metrics.broadcast(event)
        await self.sio.emit(event, data, room=room.name, skip_sid=skip_sid)

    def local_rooms(self) -> dict[str, int]:
        """Rooms with at least one member on this node, by kind (read at each scrape)."""
        counts = dict.fromkeys(KINDS, 0)
        for room, members in self.sio.manager.rooms.get("/", {}).items():
            # python-socketio also keeps a room per sid (holding that sid) and one for
            # everyone (None); a sid may contain "_"
            if not members or room in members or (parsed := Room.parse(room)) is None:
                continue
            counts[parsed.kind] += 1
        return counts

    def _in_room(self, sid: str, room: Room) -> bool:
        return sid in self.sio.manager.rooms.get("/", {}).get(room.name, ())

    # -- revocation --------------------------------------------------------

    def check_can_revoke(self) -> None:
        """Raise :class:`Unavailable` unless a revocation would reach every node.

        Called before the role is removed, so that a refusal changes nothing.
        """
        if self.cluster is not None and not self.cluster.publishing:
            raise Unavailable("Other nodes cannot be told of the change now; retry")

    async def revoke(self, room: Room, user_id: str) -> None:
        """Take every connection of ``user_id`` out of ``room``, on every node.

        For a user whose access was removed from the store. Here at once; the
        other nodes before any broadcast published after this returns. If Redis
        fails in between, :class:`Unavailable` asks the caller to retry (which
        is safe: the role is already gone, the revocation is sent again).
        """
        await self.take_out(room, user_id)
        if self.cluster is not None and not await self.cluster.revoke(room.name, user_id):
            raise Unavailable("Access was removed, but not every node was told; retry")

    async def _revoked_elsewhere(self, name: str, user_id: str) -> None:
        """Another node revoked ``user_id``'s access to the room named ``name``."""
        if (room := Room.parse(name)) is not None:
            await self.take_out(room, user_id)

    async def recheck_access(self) -> None:
        """Take out of each document room here whoever lost access to the document.

        Run when this node gets the Redis channel back: a revocation published while
        it was cut off never reaches it. One role look-up per user and room hosted
        here. (Chats have no removal yet.)
        """
        delay = 0.5
        while True:
            try:
                for name, sids in list(self.sio.manager.rooms.get("/", {}).items()):
                    room = Room.parse(name)
                    if room is None or room.kind != "document":
                        continue
                    users = {conn.user_id for sid in list(sids)
                             if (conn := self.connections.get(sid)) is not None
                             and not conn.identity.is_admin}
                    for user_id in users:
                        if await self.store.get_document_role(room.id, user_id) is None:
                            await self.take_out(room, user_id)
                return
            except CollabError:  # the store is out too: all of it again, once it answers
                log.warning("store unavailable while checking access after an outage; "
                            "retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def take_out(self, room: Room, user_id: str) -> None:
        """Take this node's connections of ``user_id`` out of ``room``: access revoked.

        Each leaves the Socket.IO room before anything else can be sent to it, is
        told with an ``error`` (``PERMISSION_DENIED``), and leaves the registry's
        presence: the node holding the user's last connection there announces
        ``user:left``, as for a leave. Connections with an admin token keep their
        access, so they stay.
        """
        sids = [sid for sid, _ in self.sio.manager.get_participants("/", room.name)
                if (conn := self.connections.get(sid)) is not None
                and conn.user_id == user_id and not conn.identity.is_admin]
        if not sids:
            return
        error = CollabError(ErrorCode.PERMISSION_DENIED,
                            f"Access to {room.kind} {room.id!r} was revoked",
                            room.subject).to_dict()
        for sid in sids:
            await self.sio.leave_room(sid, room.name)
        for sid in sids:
            await self.sio.emit("error", error, to=sid, ignore_queue=True)
        for sid in sids:
            try:
                gone = await self.registry.leave(sid, room.name)
            except CollabError:
                log.warning("registry unavailable while revoking %s in %s", sid, room)
                continue
            if gone:
                await self.broadcast("user:left", room.presence(user_id), room)

    # -- dispatch ----------------------------------------------------------

    def _dispatcher(self, event: str, schema: Any, handler: Any) -> Any:
        events = self.metrics.events
        ok_counter = events.labels(event, "ok")
        latency = self.metrics.handler_latency.labels(event)

        async def dispatch(sid: str, *args: Any) -> dict[str, Any]:
            start = time.perf_counter()
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
                result = await handler(self, conn, data)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an ack
                return await self._fail(sid, event, exc, start)
            ok_counter.inc()
            latency.observe(time.perf_counter() - start)
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
