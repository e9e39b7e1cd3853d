"""One live Socket.IO connection, as the server keeps it."""

from __future__ import annotations

import asyncio
import dataclasses

from .auth import Identity
from .errors import RateLimited
from .permissions import RoleCache
from .ratelimit import TokenBucket
from .userlimits import UserShare


@dataclasses.dataclass(eq=False, slots=True)
class Connection:
    """What the server keeps for one live Socket.IO connection."""

    sid: str
    identity: Identity
    bucket: TokenBucket | None
    #: this user's connection count and shared event bucket on this node
    user: UserShare
    #: the roles this connection was found to have (collab/permissions.py)
    roles: RoleCache
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
