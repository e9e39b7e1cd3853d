"""Redis connections, as every part of collab that talks to Redis opens them.

The registry (presence, node liveness) and the broadcast layer (pub/sub) each
open their own clients, with the same options: short timeouts, so that an
outage answers ``UNAVAILABLE`` within seconds rather than hanging, and one
quick retry for a pooled connection that died with a restarted Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: an outage answers UNAVAILABLE after about this long, not after minutes
SOCKET_TIMEOUT = 2.0

#: errors that mean "Redis cannot be reached right now", never a bug of ours
OUTAGES: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes BusyLoadingError while Redis loads its data
    RedisTimeoutError,
    ReadOnlyError,  # a replica answering during a failover
    TryAgainError,
    OSError,
    asyncio.TimeoutError,
)


def connection_options() -> dict[str, Any]:
    """Client options for every Redis connection collab opens: fail fast, retry once."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        # One retry replaces a pooled connection that died with a restarted Redis
        # (that fails at once). A timeout is not retried: a Redis that hangs would
        # cost every call twice the timeout.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1,
                       supported_errors=(RedisConnectionError,)),
    }
