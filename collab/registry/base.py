"""The registry of live connections and room presence.

A user may hold several connections (tabs, nodes); presence is per user, so
a user is in a room while any of their connections is. Methods return what
changed so the caller can broadcast ``user:joined`` / ``user:left`` exactly
when presence changes.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

#: ``(event, room, user_id, skip_sids)``: announce ``user:joined`` / ``user:left``
PresenceCallback = Callable[[str, str, str, list[str]], Awaitable[None]]


class Registry(abc.ABC):
    display_url: str = ""
    #: set by the app; a registry awaits it for presence changes it finds on its
    #: own, outside any call (a dead node purged, state rebuilt after an outage)
    on_presence: PresenceCallback | None = None

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def open(self) -> None:
        """Connect; the default has nothing to do."""

    async def close(self) -> None:
        """Forget this node's connections and release resources."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`~collab.errors.Unavailable` unless the backend answers."""

    @abc.abstractmethod
    async def add_connection(self, sid: str, user_id: str) -> None:
        ...

    @abc.abstractmethod
    async def remove_connection(self, sid: str) -> list[tuple[str, str]]:
        """Drop a connection and its rooms.

        Returns ``(room, user_id)`` for each room its user is no longer
        present in.
        """

    @abc.abstractmethod
    async def join(self, sid: str, room: str) -> bool:
        """Put a connection in a room; True when its user was not present before.

        False, and no change, for a connection that is removed (or being removed).
        """

    @abc.abstractmethod
    async def leave(self, sid: str, room: str) -> bool:
        """Take a connection out of a room; True when its user is no longer present."""

    @abc.abstractmethod
    async def room_users(self, room: str) -> list[str]:
        """Distinct user ids present in the room, sorted."""
