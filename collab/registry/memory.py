"""The in-process registry: one node, nothing to install."""

from __future__ import annotations

from collections import defaultdict

from .base import Registry


class MemoryRegistry(Registry):
    display_url = "memory://"

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self._users: dict[str, str] = {}  # sid -> user_id
        self._sid_rooms: dict[str, set[str]] = defaultdict(set)
        # room -> user_id -> sids of that user in the room
        self._rooms: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._users.clear()
        self._sid_rooms.clear()
        self._rooms.clear()

    async def add_connection(self, sid: str, user_id: str) -> None:
        self._users[sid] = user_id

    async def remove_connection(self, sid: str) -> list[tuple[str, str]]:
        user_id = self._users.get(sid)
        gone = [(room, user_id) for room in list(self._sid_rooms.get(sid, ()))
                if self._discard(sid, room)]
        self._sid_rooms.pop(sid, None)
        self._users.pop(sid, None)
        return gone

    async def join(self, sid: str, room: str) -> bool:
        user_id = self._users.get(sid)
        if user_id is None:  # disconnected before the join ran
            return False
        sids = self._rooms[room][user_id]
        first = not sids
        sids.add(sid)
        self._sid_rooms[sid].add(room)
        return first

    async def leave(self, sid: str, room: str) -> bool:
        if room not in self._sid_rooms.get(sid, ()):
            return False
        self._sid_rooms[sid].discard(room)
        return self._discard(sid, room)

    def _discard(self, sid: str, room: str) -> bool:
        users = self._rooms.get(room)
        user_id = self._users.get(sid)
        if users is None or user_id not in users:
            return False
        users[user_id].discard(sid)
        if users[user_id]:
            return False
        del users[user_id]
        if not users:
            del self._rooms[room]
        return True

    async def room_users(self, room: str) -> list[str]:
        return sorted(self._rooms.get(room, {}))

    def connection_count(self) -> int:
        return len(self._users)
