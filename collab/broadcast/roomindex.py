"""python-socketio's client manager, knowing each client's rooms without a scan.

python-socketio keeps rooms as ``rooms[namespace][room] -> {sid: eio_sid}`` and
nothing from a client to its rooms, so a disconnect (``basic_disconnect``)
copies the whole room table and asks every room whether the client is in it,
and ``get_rooms`` asks them all too. Every client has a room of its own, so
with N connections each disconnect costs N lookups: closing 5,000 idle
connections took 12.5 million of them (cProfile, bench/README.md), minutes
of a busy event loop after a load balancer drained a node, and the connect
storm that follows ran behind that backlog.

:class:`IndexedManager` keeps the other direction for the rooms a client
joined besides its own and the namespace's (``None``): those two every
client has, so an idle client costs the index nothing.
"""

from __future__ import annotations

from typing import Any

import socketio


class IndexedManager(socketio.AsyncManager):
    """An ``AsyncManager`` whose disconnect and ``get_rooms`` cost the client's rooms."""

    def __init__(self) -> None:
        super().__init__()
        #: (namespace, sid) -> the rooms it joined besides its own and None, in the order
        #: it joined them (a dict as an ordered set)
        self._joined: dict[tuple[str, str], dict[Any, None]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            self._joined.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        if room is not None and room != sid:
            key = (namespace, sid)
            joined = self._joined.get(key)
            if joined is not None:
                joined.pop(room, None)
                if not joined:
                    del self._joined[key]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms ``sid`` is in (its own first), as python-socketio's."""
        ns = self.rooms.get(namespace)
        if ns is None:
            return []
        own = [sid] if sid in ns.get(sid, ()) else []
        return own + [room for room in self._joined.get((namespace, sid), ())
                      if sid in ns.get(room, ())]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # python-socketio's own, with the rooms taken from the index instead of a scan
        ns = self.rooms.get(namespace)
        if ns is None:
            return
        rooms = [room for room in (None, sid) if sid in ns.get(room, ())]
        rooms += self._joined.get((namespace, sid), ())
        for room in rooms:
            self.basic_leave_room(sid, namespace, room)
        self._joined.pop((namespace, sid), None)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]
