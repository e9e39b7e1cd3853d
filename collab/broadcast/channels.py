"""Redis pub/sub with channels added and removed while it runs, each confirmed.

A :class:`Link` is one subscriber session: it subscribes the channels it is
asked for, says when Redis has confirmed each (from then on nothing published
on it is missed), and yields what arrives. When anything goes wrong the link
is dead as a whole: its owner opens a new one and subscribes everything again,
and, since what was published meanwhile is lost, treats that as an outage.
No reconnect happens silently underneath (redis-py's retry is off for these
connections).

- :class:`PlainLink`: one Redis, ``SUBSCRIBE``/``PUBLISH``, one connection.
- :class:`ShardedLink`: Redis Cluster, sharded pub/sub (``SSUBSCRIBE``/
  ``SPUBLISH``, Redis 7): a channel lives on the shard that owns its hash
  slot, so there is one connection per shard that holds a subscribed channel.

Messages wait in a bounded queue between the connection and the consumer;
when the consumer falls that far behind, the link stops reading, Redis
buffers, and past its output-buffer limit Redis drops the connection, which
the owner notices like any other loss.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from ..redisconn import SOCKET_TIMEOUT, RedisTarget, connection_options, open_client
from ..tasks import cancel_and_wait

log = logging.getLogger("collab.broadcast")

#: messages read from Redis and not yet handled, per link
QUEUE_SIZE = 10_000


class LinkLost(Exception):
    """The subscriber connection ended (or Redis took a subscription away)."""


def subscriber_options() -> dict[str, Any]:
    # no read timeout: a quiet channel is not an outage; and no retry: redis-py would
    # reconnect and subscribe again by itself, and what was published meanwhile
    # (revocations too) would be lost unnoticed
    return {**connection_options(), "socket_timeout": None, "retry": Retry(NoBackoff(), 0)}


class Link(abc.ABC):
    """One subscriber session; see the module docstring."""

    #: Redis' names for this link's message and confirmation types
    MESSAGE = "message"
    SUBSCRIBED = "subscribe"
    UNSUBSCRIBED = "unsubscribe"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, bytes] | BaseException] = asyncio.Queue(QUEUE_SIZE)
        #: channel -> futures waiting for Redis to confirm its subscription
        self._confirming: dict[str, list[asyncio.Future[None]]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._closed = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; raise what an outage raises when Redis cannot be reached."""

    @abc.abstractmethod
    async def _send_subscribe(self, channels: list[str]) -> None: ...

    @abc.abstractmethod
    async def _send_unsubscribe(self, channels: list[str]) -> None: ...

    @abc.abstractmethod
    async def _release(self) -> None:
        """Close the connections."""

    async def subscribe(self, channels: Collection[str]) -> None:
        """Subscribe ``channels``; return once Redis has confirmed every one."""
        if not channels:
            return
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            future: asyncio.Future[None] = loop.create_future()
            self._confirming.setdefault(channel, []).append(future)
            waits.append(future)
        try:
            await self._send_subscribe(list(channels))
            await asyncio.gather(*waits)
        finally:
            for channel, future in zip(channels, waits, strict=True):
                if not future.done():
                    future.cancel()
                pending = self._confirming.get(channel)
                if pending is not None and future in pending:
                    pending.remove(future)
                    if not pending:
                        del self._confirming[channel]

    async def unsubscribe(self, channels: Collection[str]) -> None:
        """Ask Redis to stop sending ``channels`` (what is already on its way still comes)."""
        if channels:
            await self._send_unsubscribe(list(channels))

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """``(channel, data)`` as they arrive; raises :class:`LinkLost` (or the outage)
        when the link dies."""
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._readers)
        self._readers.clear()
        for futures in self._confirming.values():
            for future in futures:
                if not future.done():
                    future.set_exception(LinkLost("link closed"))
        self._confirming.clear()
        with contextlib.suppress(Exception):
            await self._release()

    def _start_reader(self, pubsub: aioredis.client.PubSub) -> None:
        self._readers.append(asyncio.ensure_future(self._read(pubsub)))

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message.get("type")
                channel = message.get("channel")
                if isinstance(channel, bytes):
                    channel = channel.decode()
                if kind == self.MESSAGE:
                    data = message["data"]
                    await self._queue.put((channel, data if isinstance(data, bytes)
                                           else str(data).encode()))
                elif kind == self.SUBSCRIBED:
                    for future in self._confirming.pop(channel, ()):
                        if not future.done():
                            future.set_result(None)
                elif kind == self.UNSUBSCRIBED and not self._closed:
                    self._unsubscribed(channel)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._fail(exc)

    def _unsubscribed(self, channel: str) -> None:
        """Redis confirmed an unsubscribe (ours, or one it decided on itself)."""

    def _fail(self, exc: BaseException) -> None:
        for futures in self._confirming.values():
            for future in futures:
                if not future.done():
                    future.set_exception(LinkLost(str(exc)))
        self._confirming.clear()
        # the consumer must see the loss even when the queue is full
        while True:
            try:
                self._queue.put_nowait(exc)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()


class PlainLink(Link):
    """One Redis: ``SUBSCRIBE`` on one connection.

    ``control`` is a channel subscribed for the link's whole life (the node's
    own), so that the connection exists, and a lost one is noticed, even while
    the node hosts no room.
    """

    def __init__(self, url: str, control: str) -> None:
        super().__init__()
        self._client = aioredis.from_url(url, **subscriber_options())
        self._pubsub = self._client.pubsub()
        self._control = control

    async def open(self) -> None:
        await asyncio.wait_for(self._pubsub.subscribe(self._control), SOCKET_TIMEOUT)
        # the connection exists now: read it (the confirmation comes through the reader)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(self._control, []).append(future)
        self._start_reader(self._pubsub)
        await asyncio.wait_for(future, SOCKET_TIMEOUT)

    async def _send_subscribe(self, channels: list[str]) -> None:
        await self._pubsub.subscribe(*channels)

    async def _send_unsubscribe(self, channels: list[str]) -> None:
        await self._pubsub.unsubscribe(*channels)

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        await self._client.aclose()


class Transport(abc.ABC):
    """How a broadcaster reaches Redis: subscriber links, publishing, a liveness probe."""

    @abc.abstractmethod
    def link(self, control: str) -> Link:
        """A new, unopened subscriber session."""

    @abc.abstractmethod
    async def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``(channel, data)`` in order (per channel), in as few round trips
        as the backend allows; raise what an outage raises."""

    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class PlainTransport(Transport):
    """One Redis (standalone, or behind Sentinel): ``PUBLISH`` in a pipeline."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self._client: Any = None

    def _publisher(self) -> aioredis.Redis:
        if self._client is None:
            self._client = open_client(self.target)
        return self._client

    def link(self, control: str) -> Link:
        return PlainLink(self.target.url, control)

    async def publish(self, messages: list[tuple[str, bytes]]) -> None:
        client = self._publisher()
        if len(messages) == 1:
            await client.publish(*messages[0])
            return
        pipe = client.pipeline(transaction=False)
        for channel, data in messages:
            pipe.publish(channel, data)
        await pipe.execute()

    async def ping(self) -> None:
        await self._publisher().ping()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


#: what a shard's subscriber connection takes over from the cluster client's settings
_NODE_KWARGS = ("host", "port", "username", "password", "credential_provider",
                "socket_connect_timeout", "socket_keepalive")


def _node_client(node: Any) -> aioredis.Redis:
    """A subscriber client for one cluster node, with the cluster client's credentials
    and TLS settings but no read timeout and no retry."""
    kwargs = {k: v for k, v in node.connection_kwargs.items()
              if k in _NODE_KWARGS or k.startswith("ssl")}
    kwargs.update(subscriber_options())
    pool = aioredis.ConnectionPool(connection_class=node.connection_class, **kwargs)
    return aioredis.Redis(connection_pool=pool)


class ShardedLink(Link):
    """Redis Cluster: ``SSUBSCRIBE`` on the shard that owns each channel's slot.

    One connection per shard that holds a subscribed channel (and one for the
    control channel). A shard that drops a subscription on its own (its slot
    moved in a resharding or a failover) ends the link like a lost connection:
    the new link subscribes again where the slots are now.
    """

    MESSAGE = "smessage"
    SUBSCRIBED = "ssubscribe"
    UNSUBSCRIBED = "sunsubscribe"

    def __init__(self, cluster: Any, control: str) -> None:
        super().__init__()
        self._cluster = cluster
        self._control = control
        #: node name -> (client, pubsub) of that shard's subscriber connection
        self._shards: dict[str, tuple[aioredis.Redis, Any]] = {}
        #: channel -> our SUNSUBSCRIBEs of it that Redis has not confirmed yet. A count,
        #: not a flag: a join may subscribe again while the leave's SUNSUBSCRIBE is in
        #: flight, and that confirmation, arriving after the new SSUBSCRIBE went out, is
        #: still ours; only one beyond the count is Redis dropping the channel itself
        self._leaving: collections.Counter[str] = collections.Counter()

    async def open(self) -> None:
        # a fresh view of the slots: a lost link may mean they moved
        try:
            await asyncio.wait_for(self._cluster.initialize(), SOCKET_TIMEOUT)
            await asyncio.wait_for(self._cluster.nodes_manager.initialize(), SOCKET_TIMEOUT)
        except RedisClusterException as exc:  # no slot map to be had: an outage
            raise LinkLost(f"cannot read the cluster's slot map: {exc}") from exc
        await asyncio.wait_for(self.subscribe([self._control]), SOCKET_TIMEOUT)

    def _pubsub_for(self, channel: str) -> tuple[Any, bool]:
        node = self._cluster.get_node_from_key(channel)
        shard = self._shards.get(node.name)
        if shard is not None:
            return shard[1], False
        client = _node_client(node)
        pubsub = client.pubsub()
        self._shards[node.name] = (client, pubsub)
        return pubsub, True

    async def _send_subscribe(self, channels: list[str]) -> None:
        for channel in channels:  # one per command: channels of one command share a slot
            pubsub, new = self._pubsub_for(channel)
            await pubsub.ssubscribe(channel)
            if new:  # the connection exists once the first command went out
                self._start_reader(pubsub)

    async def _send_unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            node = self._cluster.get_node_from_key(channel)
            shard = self._shards.get(node.name)
            if shard is not None:
                # counted before it goes out: the reader may see the answer first
                self._leaving[channel] += 1
                try:
                    await shard[1].sunsubscribe(channel)
                except BaseException:
                    # maybe never sent: an answer that comes anyway ends the link, which
                    # is safe; a count with no command behind it could hide a real drop
                    self._left(channel)
                    raise

    def _unsubscribed(self, channel: str) -> None:
        if self._leaving[channel]:
            self._left(channel)
        else:
            self._fail(LinkLost(f"Redis Cluster dropped the subscription to {channel}"))

    def _left(self, channel: str) -> None:
        self._leaving[channel] -= 1
        if self._leaving[channel] <= 0:
            del self._leaving[channel]

    async def _release(self) -> None:
        for client, pubsub in self._shards.values():
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()
        self._shards.clear()


class ShardedTransport(Transport):
    """Redis Cluster: ``SPUBLISH`` through the cluster client, which sends each channel's
    messages to the shard that owns it, in order (a pipeline groups them per shard)."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster

    def link(self, control: str) -> Link:
        return ShardedLink(self._cluster, control)

    async def publish(self, messages: list[tuple[str, bytes]]) -> None:
        if len(messages) == 1:
            await self._cluster.spublish(*messages[0])
            return
        pipe = self._cluster.pipeline(transaction=False)
        for channel, data in messages:
            pipe.spublish(channel, data)
        await pipe.execute()

    async def ping(self) -> None:
        await self._cluster.ping()

    async def close(self) -> None:
        await self._cluster.aclose()


def open_transport(target: RedisTarget) -> Transport:
    """The transport for ``target``: sharded pub/sub on a cluster (each room's channel on
    the shard owning its slot), plain pub/sub otherwise."""
    return ShardedTransport(open_client(target)) if target.cluster else PlainTransport(target)
