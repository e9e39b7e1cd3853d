"""Rooms and presence: who is in which room, on this node and across nodes.

A connection is in a room twice over: in python-socketio's room on this node
(what broadcasts reach) and in the registry (what ``users`` lists and what
decides ``user:joined`` / ``user:left`` across nodes). :class:`Membership`
keeps the two together, and takes users out when their access is revoked.

A y-websocket socket (collab/yws.py) is an *outside member*: a receiver of a
document room and its live sub-room in the broadcaster (so it gets what live
members get, in the same order, and its node hears the room), revoked like a
Socket.IO member, but not in the registry's presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .auth import Identity
from .broadcast import Broadcasts, LocalBroadcaster
from .connection import Connection
from .errors import CollabError, ErrorCode, PermissionDenied, Unavailable
from .registry.base import Registry
from .rooms import KINDS, Room
from .store.base import Store

log = logging.getLogger("collab")


class OutsideMember(Protocol):
    """A member of a document room that is not a Socket.IO connection (a y-websocket
    socket): a broadcast receiver with an identity, told when its access is revoked."""

    key: str
    identity: Identity

    def receive(self, room: str, event: str, data: Any) -> None: ...

    def revoked(self, message: str) -> None:
        """Access to the room was removed: end the membership (close the socket)."""


class Membership:
    """Room entry and exit, presence announcements and revocation for one node."""

    def __init__(self, sio: Any, broadcaster: LocalBroadcaster, broadcasts: Broadcasts,
                 registry: Registry, store: Store,
                 connections: Mapping[str, Connection],
                 on_leave: Callable[[str, Room], Awaitable[None]] | None = None,
                 outside: Mapping[str, OutsideMember] | None = None) -> None:
        self._sio = sio
        self._broadcaster = broadcaster
        self._broadcasts = broadcasts
        self._registry = registry
        self._store = store
        self._connections = connections
        #: told of every sub-room a connection leaves (a leave, a revocation, a disconnect)
        self._on_leave = on_leave
        #: this node's outside members by key (the y-websocket sockets)
        self._outside: Mapping[str, OutsideMember] = outside if outside is not None else {}

    async def join(
        self, conn: Connection, room: Room, load: Callable[[], Awaitable[dict[str, Any]]],
        sub: Room | None = None,
    ) -> dict[str, Any]:
        """Enter a room (and ``sub``, one of its sub-rooms: a document member's mode),
        then ``load`` what the join returns; undo the entry if that fails.

        Entering before loading means no broadcast can fall between the two.
        The user is announced only once the join has succeeded, and only if
        this is their first connection in the room. A connection in another
        sub-room of the room (a mode switch) leaves it once the join succeeded.
        """
        rejoin = room.name in self._sio.rooms(conn.sid)
        entered = [room] if sub is None else [room, sub]
        fresh = [r for r in entered if not self.contains(conn.sid, r)]
        for each in entered:
            await self._sio.enter_room(conn.sid, each.name)
        try:
            first = await self._registry.join(conn.sid, room.name)
            result = await load()
            users = await self._registry.room_users(room.name)
            if not self.contains(conn.sid, room):
                # revoked meanwhile (``load`` checks the role again once the connection
                # is in the room, so a revocation cannot fall between check and entry)
                raise PermissionDenied(f"Access was revoked while joining {room.name!r}")
        except BaseException:
            for each in fresh if rejoin and self.contains(conn.sid, room) else entered:
                await self._sio.leave_room(conn.sid, each.name)
            if not rejoin or not self.contains(conn.sid, room):
                with contextlib.suppress(CollabError):
                    await self._registry.leave(conn.sid, room.name)
            raise
        for other in self._subs_of(conn.sid, room):
            if other != sub:
                await self._leave_sub(conn.sid, other)
        if first:
            await self._broadcasts.send(
                room, "user:joined", room.presence(conn.user_id), skip_sid=conn.sid)
        return {**result, "users": users}

    async def leave(self, conn: Connection, room: Room) -> None:
        gone = await self._registry.leave(conn.sid, room.name)
        for sub in self._subs_of(conn.sid, room):
            await self._leave_sub(conn.sid, sub)
        await self._sio.leave_room(conn.sid, room.name)
        if gone:
            await self._broadcasts.send(room, "user:left", room.presence(conn.user_id))

    def _subs_of(self, sid: str, room: Room) -> list[Room]:
        """The sub-rooms of ``room`` that ``sid`` is in."""
        if room.kind != "document":
            return []
        return [sub for sub in (room.live, room.plain) if self.contains(sid, sub)]

    async def _leave_sub(self, sid: str, sub: Room) -> None:
        await self._sio.leave_room(sid, sub.name)
        if self._on_leave is not None:
            await self._on_leave(sid, sub)

    # -- outside members ---------------------------------------------------

    async def enter_outside(self, member: OutsideMember, room: Room) -> None:
        """Make ``member`` a live member of document ``room`` here; once this returns,
        every change announced to the room reaches it (read the document after this)."""
        for each in (room, room.live):
            await self._broadcaster.add_receiver(each.name, member)

    async def leave_outside(self, member: OutsideMember, room: Room) -> None:
        """``member`` leaves: the live members lose its awareness states at once."""
        live = member.key in self._broadcaster.receivers.get(room.live.name, {})
        for each in (room.live, room):  # (where it is not, nothing happens)
            await self._broadcaster.remove_receiver(each.name, member.key)
        if live and self._on_leave is not None:  # (once: revoked, then closed)
            await self._on_leave(member.key, room.live)

    def _outside_in(self, room: Room) -> list[OutsideMember]:
        keys = self._broadcaster.receivers.get(room.name, {})
        return [m for key in list(keys) if (m := self._outside.get(key)) is not None]

    async def disconnecting(self, sid: str) -> None:
        """``sid`` is about to go (still in its rooms): tell who needs to know."""
        if self._on_leave is None:
            return
        for name in list(self._sio.rooms(sid)):
            room = Room.parse(name)
            if room is not None and room.mode:
                await self._on_leave(sid, room)

    async def disconnected(self, sid: str) -> None:
        """``sid`` is gone: announce ``user:left`` where it was its user's last connection."""
        try:
            gone = await self._registry.remove_connection(sid)
        except CollabError:
            log.warning("registry unavailable while removing %s", sid)
            return
        for name, user_id in gone:
            if (room := Room.parse(name)) is not None:
                await self._broadcasts.send(room, "user:left", room.presence(user_id))

    async def announce_presence(
        self, event: str, room: str, user_id: str, skip_sids: list[str] | None = None
    ) -> None:
        """Send ``user:joined`` / ``user:left`` for a change no event caused (a node died)."""
        if (parsed := Room.parse(room)) is not None:
            await self._broadcasts.send(parsed, event, parsed.presence(user_id),
                                        skip_sid=skip_sids or None)

    async def room_position(self, room: str) -> int | None:
        """A chat's newest seq or a document's version: where its broadcasts stand."""
        parsed = Room.parse(room)
        if parsed is None:
            return None
        if parsed.kind == "chat":
            latest, _ = await self._store.messages_before(parsed.id, None, 1)
            return latest[-1]["seq"] if latest else 0
        document = await self._store.get_document(parsed.id)
        return document["version"] if document else None

    def local_rooms(self) -> dict[str, int]:
        """Rooms with at least one member on this node, by kind (read at each scrape)."""
        counts = dict.fromkeys(KINDS, 0)
        rooms = self._broadcaster.rooms.get("/", {})
        for room in {*rooms, *self._broadcaster.receivers}:
            members = rooms.get(room)
            # python-socketio also keeps a room per sid (holding that sid) and one for
            # everyone (None); a sid may contain "_"
            if (members and room in members) or (parsed := Room.parse(room)) is None \
                    or parsed.mode or not self._broadcaster.hosts(room):
                continue
            counts[parsed.kind] += 1
        return counts

    def contains(self, sid: str, room: Room) -> bool:
        return sid in self._broadcaster.rooms.get("/", {}).get(room.name, ())

    def alone_in(self, key: str, room: Room) -> bool:
        """Whether ``key`` (a sid, or an outside member's key) is this node's only member
        of ``room``."""
        return self._broadcaster.local_members(room.name) == [key]

    # -- revocation --------------------------------------------------------

    def check_can_revoke(self) -> None:
        """Raise :class:`Unavailable` unless a revocation would reach every node.

        Called before the role is removed, so that a refusal changes nothing.
        """
        if not self._broadcaster.publishing:
            raise Unavailable("Other nodes cannot be told of the change now; retry")

    async def revoke(self, room: Room, user_id: str) -> None:
        """Take every connection of ``user_id`` out of ``room``, on every node.

        For a user whose access was removed from the store. Here at once; the
        other nodes before any broadcast published after this returns. If Redis
        fails in between, :class:`Unavailable` asks the caller to retry (which
        is safe: the role is already gone, the revocation is sent again).
        """
        await self.take_out(room, user_id)
        if not await self._broadcaster.revoke(room, user_id):
            raise Unavailable("Access was removed, but not every node was told; retry")

    async def revoked_elsewhere(self, name: str, user_id: str) -> None:
        """Another node revoked ``user_id``'s access to the room named ``name``."""
        if (room := Room.parse(name)) is not None:
            await self.take_out(room, user_id)

    async def recheck_access(self) -> None:
        """Take out of each document room here whoever lost access to the document.

        Run when this node gets its Redis channels back: a revocation published while
        it was cut off never reaches it. One role look-up per user and room hosted
        here. (Chats have no removal yet.)
        """
        delay = 0.5
        while True:
            try:
                rooms = self._broadcaster.rooms.get("/", {})
                for name in list({*rooms, *self._broadcaster.receivers}):
                    room = Room.parse(name)
                    if room is None or room.kind != "document" or room.mode:
                        continue
                    identities = [conn.identity for sid in list(rooms.get(name, ()))
                                  if (conn := self._connections.get(sid)) is not None]
                    identities += [m.identity for m in self._outside_in(room)]
                    users = {i.user_id for i in identities if not i.is_admin}
                    for user_id in users:
                        if await self._store.get_document_role(room.id, user_id) is None:
                            await self.take_out(room, user_id)
                return
            except CollabError:  # the store is out too: all of it again, once it answers
                log.warning("store unavailable while checking access after an outage; "
                            "retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def forget_roles(self, room: Room, user_id: str) -> None:
        """Every connection of ``user_id`` here reads its role on ``room`` from the store
        again at its next event (the role was changed or removed). One pass over this
        node's connections: role changes are rare, events are not."""
        for conn in self._connections.values():
            if conn.identity.user_id == user_id:
                conn.roles.forget(room.kind, room.id)

    async def take_out(self, room: Room, user_id: str) -> None:
        """Take this node's connections of ``user_id`` out of ``room``: access revoked.

        Each leaves the Socket.IO room before anything else can be sent to it, is
        told with an ``error`` (``PERMISSION_DENIED``), and leaves the registry's
        presence: the node holding the user's last connection there announces
        ``user:left``, as for a leave. Connections with an admin token keep their
        access, so they stay.
        """
        self.forget_roles(room, user_id)  # (its connections outside the room too)
        message = f"Access to {room.kind} {room.id!r} was revoked"
        for member in self._outside_in(room):
            if member.identity.user_id == user_id and not member.identity.is_admin:
                await self.leave_outside(member, room)
                member.revoked(message)
        sids = [sid for sid, _ in self._broadcaster.get_participants("/", room.name)
                if (conn := self._connections.get(sid)) is not None
                and conn.user_id == user_id and not conn.identity.is_admin]
        if not sids:
            return
        error = CollabError(ErrorCode.PERMISSION_DENIED, message, room.subject).to_dict()
        for sid in sids:
            for sub in self._subs_of(sid, room):
                await self._leave_sub(sid, sub)
            await self._sio.leave_room(sid, room.name)
        for sid in sids:
            await self._sio.emit("error", error, to=sid)
        for sid in sids:
            try:
                gone = await self._registry.leave(sid, room.name)
            except CollabError:
                log.warning("registry unavailable while revoking %s in %s", sid, room)
                continue
            if gone:
                await self._broadcasts.send(room, "user:left", room.presence(user_id))
