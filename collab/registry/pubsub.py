"""Broadcasts across nodes over Redis pub/sub, delivered in order.

:class:`RedisPubSubManager` is python-socketio's pub/sub client manager (the same
protocol on the wire as ``socketio.AsyncRedisManager``, implemented through
its ``_publish`` / ``_listen`` hooks) with three differences that matter to
collab:

- **Order.** A message stored with seq 5 on node A and seq 6 on node B can
  reach node A's clients as 6 then 5: A delivers its own broadcast after its
  store write returns, B's arrives through Redis meanwhile. Each node
  therefore delivers ``chat:message`` (by ``seq``) and ``documents:updated``
  (by ``version``) to its clients in order, per room: it learns the room's
  position from the store when the first local client enters the room, and
  holds back a broadcast until the one before it arrived. A broadcast that
  never arrives (its node died between storing and publishing, or Redis was
  down) is given up on: nothing is held longer than :data:`GAP_TIMEOUT`
  seconds in all. While the node is cut off from the channel it delivers
  as broadcasts come, since no other node's can fill a gap.
- **Outages.** Publishing is best effort: a failed publish logs once per
  outage and never fails the event that stored the data (the message is
  durable and acked; clients on other nodes catch up with ``since_seq``).
  The listener reconnects within about 2 s once Redis answers again, where
  python-socketio's backs off up to a minute.
- **Publishing never holds up local delivery.** python-socketio's ``emit``
  delivers to this node's clients, then awaits the publish; a room's ordered
  broadcasts go out one after another, so a Redis that hangs (rather than
  refuses) would make each wait for a timeout in turn. Here ``_publish``
  only queues the message: one task publishes the queue in order, in
  batches. A publish that fails opens a circuit breaker: until a probe finds
  Redis answering again, messages for other nodes are dropped at once.
- **Fail fast.** Short socket timeouts, like the registry's.
- **Revocations.** :meth:`RedisPubSubManager.revoke` asks every other node to
  take a user's connections out of a room (``on_revoke``, set by the app);
  each handles it in channel order, before any broadcast published after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from socketio.async_pubsub_manager import AsyncPubSubManager

from ..redisconn import OUTAGES, SOCKET_TIMEOUT, connection_options

log = logging.getLogger("collab.pubsub")

#: seconds a broadcast waits for the one before it before it is delivered anyway
GAP_TIMEOUT = 2.0
RECONNECT_MAX = 2.0
#: seconds between checks of Redis while the breaker keeps publishing off
PROBE_INTERVAL = 0.5
#: messages waiting to be published; past this, they reach this node only
MAX_OUTBOX = 10_000
#: messages published in one round trip
MAX_BATCH = 500

#: event -> (resource key, position field) of broadcasts delivered in order
ORDERED_EVENTS = {
    "chat:message": ("message", "seq"),
    "documents:updated": ("document", "version"),
}
ORDERED_ROOMS = ("chat_", "document_")

#: ``room -> its newest position`` (a chat's last seq, a document's version)
PositionLookup = Callable[[str], Awaitable["int | None"]]
#: ``(room, user_id)``: take this node's connections of the user out of the room
RevokeHandler = Callable[[str, str], Awaitable[None]]


def _position(message: dict[str, Any]) -> int | None:
    spec = ORDERED_EVENTS.get(message.get("event", ""))
    data = message.get("data")
    if spec is None or message.get("binary") or not isinstance(data, list) or len(data) != 1:
        return None
    try:
        value = data[0][spec[0]][spec[1]]
    except (KeyError, TypeError, IndexError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _RoomOrder:
    """Where one room's ordered broadcasts stand on this node."""

    def __init__(self) -> None:
        self.next: int | None = None  # the position delivered next; None: take the first
        self.held: dict[int, tuple[dict[str, Any], float]] = {}  # position -> (msg, since)
        self.ready = asyncio.Event()  # set once ``next`` was read from the store
        self.timer: asyncio.TimerHandle | None = None
        self.tail: asyncio.Future[None] | None = None  # the last delivery scheduled


class RedisPubSubManager(AsyncPubSubManager):
    """Socket.IO client manager: broadcasts reach every node, in order."""

    name = "collab-redis"

    def __init__(self, url: str, channel: str = "collab") -> None:
        super().__init__(channel=channel)
        self.url = url
        #: set by the app: how far a room's ordered broadcasts have gone
        self.room_position: PositionLookup | None = None
        #: set by the app: what another node's revocation does here
        self.on_revoke: RevokeHandler | None = None
        #: set by the app: check who may still be in its rooms, after the channel was lost
        self.on_resubscribed: Callable[[], Awaitable[None]] | None = None
        self._recheck: asyncio.Future[None] | None = None
        #: (room, user) revocations Redis did not take: sent once the breaker closes
        self._unsent_revocations: dict[tuple[str, str], None] = {}
        self._publisher: aioredis.Redis | None = None
        self._orders: dict[str, _RoomOrder] = {}
        #: encoded messages for the other nodes, each with a future for a caller that
        #: waits for the outcome (None for a flush marker's payload)
        self._outbox: collections.deque[tuple[str | None, asyncio.Future[bool] | None]] = (
            collections.deque())
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._publish_failing = False  # the breaker: open while Redis did not answer
        self._outbox_full = False
        self._listen_failing = False
        self._started = False
        self._subscribed = asyncio.Event()
        #: deliveries nobody awaits (after a join, a gap's timeout): the loop keeps
        #: only weak references to tasks, so these are held here until they end
        self._deliveries: set[asyncio.Future[None]] = set()

    def initialize(self) -> None:
        # Socket.IO calls this at the first connection; start_listening() may have run it
        if not self._started:
            self._started = True
            super().initialize()

    async def start_listening(self) -> None:
        """Listen before the first client connects, so no early broadcast is missed."""
        self.initialize()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), SOCKET_TIMEOUT)

    # -- pub/sub -----------------------------------------------------------

    @property
    def publishing(self) -> bool:
        """False while the breaker is open: other nodes hear nothing from this one."""
        return not self._publish_failing

    async def _publish(self, data: Any) -> None:
        """Queue ``data`` for the other nodes; never waits for Redis."""
        self._post(self.json.dumps(data), None)

    async def revoke(self, room: str, user_id: str) -> bool:
        """Have every other node take ``user_id``'s connections out of ``room``.

        True once Redis took the request: every node handles it before any
        broadcast published after it. False when Redis cannot be reached.
        """
        done = asyncio.get_running_loop().create_future()
        sent = self._post(self._revocation(room, user_id), done) and await done
        if not sent:
            self._keep_unsent(room, user_id)
        return sent

    def _revocation(self, room: str, user_id: str) -> str:
        return self.json.dumps({"method": "revoke", "room": room, "user_id": user_id,
                                "host_id": self.host_id})

    def _keep_unsent(self, room: str, user_id: str) -> None:
        """The role is gone from the store already: tell the others once Redis answers
        (a node that lost the channel meanwhile checks its rooms when it is back)."""
        if len(self._unsent_revocations) < MAX_OUTBOX:
            self._unsent_revocations[(room, user_id)] = None

    def _resent(self, room: str, user_id: str, done: asyncio.Future[bool]) -> None:
        if done.cancelled() or not done.result():
            self._keep_unsent(room, user_id)

    async def flush_outbox(self) -> None:
        """Wait until everything queued so far was published or given up."""
        if self._sender is None or self._sender.done():
            return
        done = asyncio.get_running_loop().create_future()
        self._outbox.append((None, done))
        self._outbox_ready.set()
        await done

    def _post(self, payload: str, done: asyncio.Future[bool] | None) -> bool:
        if self._publish_failing:
            return False  # the probe closes the breaker once Redis answers
        if len(self._outbox) >= MAX_OUTBOX:
            if not self._outbox_full:
                log.warning("%d broadcasts wait for Redis; the next reach this node only",
                            len(self._outbox))
                self._outbox_full = True
            return False
        self._outbox_full = False
        self._outbox.append((payload, done))
        self._outbox_ready.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_loop())
        return True

    async def _send_loop(self) -> None:
        """Publish the outbox in order, a batch per round trip."""
        batch: list[tuple[str | None, asyncio.Future[bool] | None]] = []
        try:
            while True:
                if not self._outbox:
                    self._outbox_ready.clear()
                    await self._outbox_ready.wait()
                    continue
                count = min(len(self._outbox), MAX_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                sent = await self._send([p for p, _ in batch if p is not None])
                self._settle(batch, sent)
                batch = []
                if not sent:  # the breaker is open: what waited behind goes nowhere either
                    self._settle([self._outbox.popleft() for _ in range(len(self._outbox))],
                                 False)
        finally:  # cancelled by close()
            self._settle(batch + list(self._outbox), False)
            self._outbox.clear()

    @staticmethod
    def _settle(batch: list[tuple[str | None, asyncio.Future[bool] | None]],
                sent: bool) -> None:
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(sent)

    async def _send(self, payloads: list[str]) -> bool:
        if not payloads:
            return True
        if self._publisher is None:
            self._publisher = aioredis.from_url(self.url, **connection_options())
        try:
            if len(payloads) == 1:
                await asyncio.wait_for(
                    self._publisher.publish(self.channel, payloads[0]), SOCKET_TIMEOUT)
            else:
                pipe = self._publisher.pipeline(transaction=False)
                for payload in payloads:
                    pipe.publish(self.channel, payload)
                await asyncio.wait_for(pipe.execute(), SOCKET_TIMEOUT)
        except OUTAGES as exc:
            log.warning("cannot publish to Redis; broadcasts reach this node only "
                        "until it answers again: %s", exc)
            self._publish_failing = True
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self._probe_until_answered())
            return False
        except Exception:  # noqa: BLE001 - a refused command: drop these, go on
            log.exception("publishing %d broadcasts to Redis failed", len(payloads))
            return False
        return True

    async def _probe_until_answered(self) -> None:
        """The breaker's probe: one PING at a time until Redis answers, then close it."""
        assert self._publisher is not None
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await asyncio.wait_for(self._publisher.ping(), SOCKET_TIMEOUT)
            except Exception:  # noqa: BLE001 - any failure: still unreachable
                continue
            log.info("publishing to Redis again")
            self._publish_failing = False
            # all queued at once, before anything else can be: ahead of every broadcast
            # made from now on, and with no await that a new failure could fall into
            unsent, self._unsent_revocations = self._unsent_revocations, {}
            for room, user_id in unsent:
                done = asyncio.get_running_loop().create_future()
                if self._post(self._revocation(room, user_id), done):
                    done.add_done_callback(functools.partial(self._resent, room, user_id))
                else:
                    self._keep_unsent(room, user_id)
            return

    async def _listen(self) -> AsyncIterator[Any]:
        delay = 0.1
        while True:
            # no read timeout: a quiet channel is not an outage
            # and no retry: redis-py would reconnect and subscribe again by itself, and
            # what was published meanwhile (revocations too) would be lost unnoticed
            options = {**connection_options(), "socket_timeout": None,
                       "retry": Retry(NoBackoff(), 0)}
            client = aioredis.from_url(self.url, **options)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                if self._listen_failing:
                    log.info("receiving broadcasts from Redis again")
                    self._listen_failing = False
                    if self.on_resubscribed is not None:
                        # what was published meanwhile is lost, revocations included
                        self._recheck = asyncio.ensure_future(self._resubscribed())
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        data = self.json.loads(message["data"])
                    except Exception:  # noqa: BLE001 - not ours; python-socketio skips it too
                        continue
                    if isinstance(data, dict) and data.get("method") == "revoke":
                        await self._handle_revoke(data)  # python-socketio knows no such method
                    else:
                        yield data
            except OUTAGES as exc:
                if not self._listen_failing:
                    log.warning("lost the Redis broadcast channel; retrying: %s", exc)
                    self._listen_failing = True
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):  # even if the line above failed
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _resubscribed(self) -> None:
        assert self.on_resubscribed is not None
        try:
            await self.on_resubscribed()
        except Exception:  # noqa: BLE001 - nobody awaits this; the next outage tries again
            log.exception("checking access after the Redis channel came back failed")

    async def _handle_revoke(self, message: dict[str, Any]) -> None:
        room, user_id = message.get("room"), message.get("user_id")
        if message.get("host_id") == self.host_id or self.on_revoke is None \
                or not isinstance(room, str) or not isinstance(user_id, str):
            return
        try:
            await self.on_revoke(room, user_id)
        except Exception:  # noqa: BLE001 - keep listening
            log.exception("revoking %s in %s failed", user_id, room)

    async def close(self) -> None:
        """Publish what is queued (a node's goodbye), stop listening, release the connections."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush_outbox(), SOCKET_TIMEOUT)
        for task in (self._recheck, self._sender, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._recheck = self._sender = self._probe = None
        thread = getattr(self, "thread", None)
        if isinstance(thread, asyncio.Future):
            thread.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await thread
        for order in self._orders.values():
            if order.timer is not None:
                order.timer.cancel()
        self._orders.clear()
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None

    # -- ordered delivery --------------------------------------------------

    async def enter_room(
        self, sid: str, namespace: str, room: str, eio_sid: str | None = None
    ) -> Any:
        if self.room_position is None or not str(room).startswith(ORDERED_ROOMS):
            return await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        order = self._orders.get(room)
        if order is None:
            # the first local client: start after what the store holds now; the
            # join reads the store after this, so the client misses nothing
            order = self._orders[room] = _RoomOrder()
            position = None
            try:
                position = await self.room_position(room)
            except Exception as exc:  # noqa: BLE001 - deliver unordered rather than fail
                log.debug("no position for %s (%r); delivering as received", room, exc)
            finally:  # even if cancelled: other joins and held broadcasts wait for this
                order.next = None if position is None else position + 1
                order.ready.set()
        else:
            await order.ready.wait()
        result = await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        batch = self._take_ready(room, order)
        if batch:
            self._schedule(room, order, batch)
        return result

    async def leave_room(self, sid: str, namespace: str, room: str) -> Any:
        result = await super().leave_room(sid, namespace, room)
        self._forget_if_unused(room)
        return result

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        # a disconnect takes the client out of its rooms without leave_room()
        rooms = self.get_rooms(sid, namespace or "/")
        result = await super().disconnect(sid, namespace, **kwargs)
        for room in rooms:
            self._forget_if_unused(room)
        return result

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        position = _position(message)
        room = message.get("room")
        order = self._orders.get(room) if isinstance(room, str) else None
        if position is None or order is None:
            # not ordered, or no client of this node in the room
            await super()._handle_emit(message)
            return
        if order.ready.is_set() and (
            (order.next is not None and position < order.next)
            # cut off from Redis: nothing from other nodes can fill a gap
            or (not self._subscribed.is_set() and not order.held)
        ):
            batch = [message]  # older than the room's position: late, or a replay
            if order.next is not None:
                order.next = max(order.next, position + 1)
        else:
            order.held[position] = (message, asyncio.get_running_loop().time())
            batch = self._take_ready(room, order)
        if batch:
            await self._schedule(room, order, batch)
        self._forget_if_unused(room)

    def _take_ready(self, room: str, order: _RoomOrder) -> list[dict[str, Any]]:
        """Pop what can be delivered now, in order; time out the rest."""
        if not order.ready.is_set() or not order.held:
            return []
        if order.next is None:
            order.next = min(order.held)
        batch = [order.held.pop(p)[0] for p in sorted(p for p in order.held if p < order.next)]
        while order.next in order.held:
            batch.append(order.held.pop(order.next)[0])
            order.next += 1
        self._arm(room, order)
        return batch

    def _arm(self, room: str, order: _RoomOrder) -> None:
        """Wake up when the oldest held broadcast has waited :data:`GAP_TIMEOUT`."""
        if order.timer is not None:
            order.timer.cancel()
            order.timer = None
        if order.held:
            loop = asyncio.get_running_loop()
            oldest = min(arrived for _, arrived in order.held.values())
            delay = max(0.0, oldest + GAP_TIMEOUT - loop.time())
            order.timer = loop.call_later(delay, self._give_up_gap, room, order)

    def _give_up_gap(self, room: str, order: _RoomOrder) -> None:
        """Deliver what waited too long, skipping the broadcasts that never came.

        Each held broadcast waits at most :data:`GAP_TIMEOUT` in all, however
        many gaps lie before it (after an outage there is one per lost message).
        """
        order.timer = None
        if not order.held:
            return
        due = asyncio.get_running_loop().time() - GAP_TIMEOUT + 0.001
        overdue = [p for p, (_, arrived) in order.held.items() if arrived <= due]
        if not overdue:
            self._arm(room, order)
            return
        cutoff = max(overdue)
        log.debug("gave up waiting for %s positions %s..%s", room, order.next, cutoff)
        batch = [order.held.pop(p)[0] for p in sorted(p for p in order.held if p <= cutoff)]
        order.next = cutoff + 1
        self._schedule(room, order, batch + self._take_ready(room, order))

    def _schedule(
        self, room: str, order: _RoomOrder, batch: list[dict[str, Any]]
    ) -> asyncio.Future[None]:
        """Deliver ``batch`` after every delivery scheduled before it, for this room."""
        previous = order.tail
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order.tail = done
        deliver = super()._handle_emit

        async def run() -> None:
            try:
                if previous is not None:
                    await previous
                for message in batch:
                    try:
                        await deliver(message)
                    except Exception:  # noqa: BLE001 - the next ones still go out
                        log.exception("delivering %s to %s failed", message.get("event"), room)
            finally:
                done.set_result(None)
                self._forget_if_unused(room)  # its last client may have gone meanwhile

        task = asyncio.ensure_future(run())
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    def _forget_if_unused(self, room: str) -> None:
        """Drop a room's state once no local client is in it and nothing is pending."""
        order = self._orders.get(room)
        if order is None or not order.ready.is_set() or order.held:
            return
        if order.tail is not None and not order.tail.done():
            return
        if self.rooms.get("/", {}).get(room):
            return
        if order.timer is not None:
            order.timer.cancel()
        del self._orders[room]
