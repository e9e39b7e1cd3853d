"""IndexedManager (collab/broadcast/roomindex.py): python-socketio's room bookkeeping,
with a client's rooms known without scanning every room."""

from __future__ import annotations

import random

import socketio

from collab.broadcast.roomindex import IndexedManager


def _connect(manager, sid: str, namespace: str = "/") -> None:
    # what pre_connect does, with a fixed sid
    manager.basic_enter_room(sid, namespace, None, eio_sid="e" + sid)
    manager.basic_enter_room(sid, namespace, sid, eio_sid="e" + sid)


def _state(manager) -> dict:
    return {ns: {room: dict(members) for room, members in rooms.items()}
            for ns, rooms in manager.rooms.items()}


def test_the_same_rooms_as_python_socketio_through_any_sequence():
    rng = random.Random(7)
    ours, theirs = IndexedManager(), socketio.AsyncManager()
    sids = [f"s{i}" for i in range(30)]
    rooms = [f"chat_{i}" for i in range(8)]
    connected: set[tuple[str, str]] = set()
    for _ in range(3000):
        sid, ns = rng.choice(sids), rng.choice(["/", "/admin"])
        action, room = rng.random(), rng.choice(rooms)
        for manager in (ours, theirs):
            if (ns, sid) not in connected:
                _connect(manager, sid, ns)
            elif action < 0.45:
                manager.basic_enter_room(sid, ns, room)
            elif action < 0.8:
                manager.basic_leave_room(sid, ns, room)
            elif action < 0.85:
                manager.basic_close_room(room, ns)
            else:
                manager.basic_disconnect(sid, ns)
        if (ns, sid) not in connected:
            connected.add((ns, sid))
        elif action >= 0.85:
            connected.discard((ns, sid))
        assert _state(ours) == _state(theirs)
        for s in sids:
            for n in ("/", "/admin"):
                assert sorted(ours.get_rooms(s, n)) == sorted(theirs.get_rooms(s, n))
    for ns, sid in list(connected):
        ours.basic_disconnect(sid, ns)
    assert ours.rooms == {} and ours._joined == {}


def test_an_idle_client_costs_the_index_nothing():
    manager = IndexedManager()
    for i in range(100):
        _connect(manager, f"s{i}")
    assert manager._joined == {}
    manager.basic_enter_room("s1", "/", "chat_a")
    assert manager.get_rooms("s1", "/") == ["s1", "chat_a"]
    manager.basic_disconnect("s1", "/")
    assert manager._joined == {} and "chat_a" not in manager.rooms["/"]
    assert manager.get_rooms("s1", "/") == []
