"""Per-user limits on this node: how many connections a user holds, and one event
budget all of them share.

The per-connection token bucket (collab/ratelimit.py) stops one busy socket; a
user who opens many sockets would multiply it, and could open sockets without
end. Both limits here count this node only: behind a balancer with several
nodes, a user may hold up to the cap, and send at the rate, on each.

A user's state exists while they hold a connection here and goes with their
last one, so it is bounded by the connections this node holds, not by the users
it has ever seen. (A user who closes every connection starts again with a full
bucket, as a new connection does with its own.)
"""

from __future__ import annotations

import dataclasses

from .errors import TooManyConnections
from .ratelimit import TokenBucket


@dataclasses.dataclass(eq=False, slots=True)
class UserShare:
    """What one user holds on this node."""

    connections: int = 0
    #: events of all the user's connections; None when the per-user rate is off
    bucket: TokenBucket | None = None


class UserLimits:
    """The per-user connection cap and event rate; 0 turns either off."""

    def __init__(self, max_connections: int, rate: float, burst: int) -> None:
        self.max_connections = max_connections
        self.rate = rate
        self.burst = burst
        self._users: dict[str, UserShare] = {}

    def acquire(self, user_id: str) -> UserShare:
        """Count one more connection of ``user_id``; :class:`TooManyConnections` at the cap.

        Synchronous, so handshakes racing each other cannot all pass the cap.
        """
        share = self._users.get(user_id)
        if share is None:
            bucket = TokenBucket(self.rate, self.burst) if self.rate > 0 else None
            share = self._users[user_id] = UserShare(bucket=bucket)
        elif 0 < self.max_connections <= share.connections:
            raise TooManyConnections(self.max_connections)
        share.connections += 1
        return share

    def release(self, user_id: str) -> None:
        """One connection of ``user_id`` is gone (or never completed)."""
        share = self._users.get(user_id)
        if share is None:
            return
        share.connections -= 1
        if share.connections <= 0:
            del self._users[user_id]

    def connections(self, user_id: str) -> int:
        """How many connections ``user_id`` holds here (handshakes under way included)."""
        share = self._users.get(user_id)
        return share.connections if share is not None else 0

    def __len__(self) -> int:
        """Users with a connection on this node."""
        return len(self._users)
