"""Broadcasts: from "this stored item must reach room R at position P" to bytes on sockets.

- :mod:`~collab.broadcast.publish`: what handlers call (:class:`Broadcasts`):
  a broadcast, or a stored item at its position, in order per room.
- :mod:`~collab.broadcast.sequencer`: this node's store calls overlap; their
  broadcasts leave in position order all the same.
- :mod:`~collab.broadcast.local`: the fast fan-out to this node's sockets
  (:class:`LocalBroadcaster`, the client manager of a single node).
- :mod:`~collab.broadcast.redis`: the other nodes, over a Redis channel per
  room (:class:`~collab.broadcast.redis.RedisBroadcaster`), with
  :mod:`~collab.broadcast.holdback` ordering what arrives and
  :mod:`~collab.broadcast.channels` and :mod:`~collab.broadcast.wire` for the
  subscriptions and the bytes.

:func:`open_broadcaster` picks the broadcaster for a registry URL; the node
builds it once, with everything it needs as constructor arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from ..metrics import Metrics
from .hooks import NodeHooks
from .local import LocalBroadcaster, Receiver, bounded_handler, cap_send_buffer, write_bounded
from .publish import Broadcasts, Slot

#: builds the node's broadcaster once the node can answer its questions
BroadcasterFactory = Callable[[NodeHooks], LocalBroadcaster]


def open_broadcaster(url: str, metrics: Metrics, *, fast: bool = True,
                     compression: bool = False) -> BroadcasterFactory:
    """The broadcaster for registry URL ``url``: this node alone for ``memory://``,
    every node over Redis pub/sub otherwise."""
    on_slow_consumer = metrics.slow_consumers_closed.inc
    if url.startswith("memory://"):
        def local(hooks: NodeHooks) -> LocalBroadcaster:
            return LocalBroadcaster(fast=fast, compression=compression,
                                    on_slow_consumer=on_slow_consumer)
        return local

    from ..redisconn import RedisTarget
    from .channels import open_transport
    from .redis import RedisBroadcaster

    target = RedisTarget.parse(url)

    def redis(hooks: NodeHooks) -> LocalBroadcaster:
        return RedisBroadcaster(open_transport(target), hooks, metrics=metrics, fast=fast,
                                compression=compression, on_slow_consumer=on_slow_consumer)
    return redis


__all__ = ["BroadcasterFactory", "Broadcasts", "LocalBroadcaster", "NodeHooks", "Receiver",
           "Slot", "bounded_handler", "cap_send_buffer", "open_broadcaster", "write_bounded"]
