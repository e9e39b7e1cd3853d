"""Broadcasts across nodes over Redis pub/sub: a channel per room, delivered in order.

:class:`RedisBroadcaster` is the local broadcaster (:mod:`collab.broadcast.local`)
with the other nodes added:

- **A channel per room.** A node subscribes to a room's channel when its first
  local member enters and unsubscribes when its last one leaves; a broadcast
  (presence included) is published on its room's channel only. A node that
  hosts no member of a room receives none of its traffic: adding nodes adds
  capacity, where one channel for everything (Socket.IO's Redis adapter,
  python-socketio's ``AsyncRedisManager``) makes every node decode every
  broadcast of every node. The entry waits until Redis has confirmed the
  subscription and only then reads the room's position from the store, and
  the join reads the store after that: whatever is published before the
  subscription took effect is in what the join read, and whatever after it
  arrives. A join while an unsubscribe is in flight waits for it and
  subscribes again (one lock orders every subscription change).
- **Order.** Positioned broadcasts (a chat's seq, a document's version) go
  through :mod:`collab.broadcast.holdback`, this node's own as well.
- **Outages.** Local delivery never waits for Redis. ``broadcast`` queues the
  message for the other nodes: one task publishes the queue in order, in
  batches. A publish that fails opens a circuit breaker: until a probe finds
  Redis answering again, messages for other nodes are dropped at once (they
  are stored and acked; clients on other nodes catch up with ``since_seq``).
  A lost subscriber connection is noticed (no silent reconnect), every hosted
  room is subscribed again, and the node re-checks access in its rooms
  (:attr:`NodeHooks.resubscribed`), since revocations published meanwhile are
  lost.
- **Revocations** go on the room's channel too: every node holding members of
  the room handles one before any broadcast published after it.
- **Redis Cluster**: the same over sharded pub/sub (:class:`ShardedTransport`
  in :mod:`collab.broadcast.channels`); a room's channel lives on one shard.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import uuid
from typing import Any

from socketio import packet as sio_packet

from ..metrics import PUBSUB_KINDS, Metrics
from ..redisconn import OUTAGES, SOCKET_TIMEOUT
from ..rooms import LIVE, Room
from ..tasks import cancel_and_wait
from .channels import LinkLost, Transport
from .holdback import GAP_TIMEOUT, Holdback
from .hooks import NodeHooks
from .local import DEFAULT_MAX_QUEUED, LocalBroadcaster, SlowConsumerHook, _ignore
from .wire import ASK, EMIT, REVOKE, Envelope, channel_for, own_prefix, room_of

log = logging.getLogger("collab.broadcast")

#: the names of the rooms whose broadcasts the node observes (live document sub-rooms)
LIVE_SUFFIX = "#" + LIVE

RECONNECT_MAX = 2.0
#: seconds between checks of Redis while the breaker keeps publishing off
PROBE_INTERVAL = 0.5
#: messages waiting to be published; past this, they reach this node only
MAX_OUTBOX = 10_000
#: messages published in one round trip
MAX_BATCH = 500

#: an outbox entry: (channel, data, metric kind) and a future for a caller that waits
#: for the outcome; a flush marker has no data
_Outgoing = tuple[str, bytes | None, str, "asyncio.Future[bool] | None"]


class RedisBroadcaster(LocalBroadcaster):
    """Socket.IO client manager whose room broadcasts reach every node hosting the room."""

    alone = False

    def __init__(self, transport: Transport, hooks: NodeHooks, *,
                 metrics: Metrics | None = None, fast: bool = True,
                 compression: bool = False, max_queued: int = DEFAULT_MAX_QUEUED,
                 on_slow_consumer: SlowConsumerHook = _ignore,
                 gap_timeout: float = GAP_TIMEOUT) -> None:
        super().__init__(fast=fast, compression=compression, max_queued=max_queued,
                         on_slow_consumer=on_slow_consumer)
        self.transport = transport
        self.hooks = hooks
        self.metrics = metrics or Metrics()
        self.host_id = uuid.uuid4().hex
        self._own = own_prefix(self.host_id)
        self.holdback: Holdback[Envelope] = Holdback(
            self._deliver, self._connected, self._room_idle, gap_timeout, hooks.missed)
        #: rooms whose channel this node subscribes to (hosted, or being entered)
        self.subscribed_rooms: set[str] = set()
        self.metrics.pubsub_channels.set_function(lambda: len(self.subscribed_rooms))
        self._link: Any = None  # the open Link, while the listener has one
        self._subscriptions = asyncio.Lock()  # one subscription change at a time
        self._linked = asyncio.Event()  # set while subscribed to every hosted room
        self._listener: asyncio.Task[None] | None = None
        self._listen_failing = False
        self._recheck: asyncio.Future[None] | None = None
        self._unsubscribes: set[asyncio.Future[None]] = set()
        #: (room, user) revocations Redis did not take: sent once the breaker closes
        self._unsent_revocations: dict[tuple[str, str], None] = {}
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._publish_failing = False  # the breaker: open while Redis did not answer
        self._outbox_full = False
        self._published = {kind: self.metrics.pubsub_published.labels(kind)
                           for kind in PUBSUB_KINDS}
        self._received = {kind: self.metrics.pubsub_received.labels(kind)
                          for kind in PUBSUB_KINDS}

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Listen before the first client connects (waits up to the socket timeout for
        Redis; a node that starts during an outage subscribes once it answers)."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._linked.wait(), SOCKET_TIMEOUT)

    async def close(self) -> None:
        """Publish what is queued (a node's goodbye), stop listening, release connections."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush_outbox(), SOCKET_TIMEOUT)
        tasks = [self._recheck, self._sender, self._probe, self._listener,
                 *self._unsubscribes]
        await cancel_and_wait(*tasks)
        self._recheck = self._sender = self._probe = self._listener = None
        self.holdback.close()
        await self.transport.close()

    # -- broadcasting ------------------------------------------------------

    @property
    def publishing(self) -> bool:
        """False while the breaker is open: other nodes hear nothing from this one."""
        return not self._publish_failing

    async def broadcast(self, room: Room, event: str, data: Any, *,
                        position: int | None = None, skip_sid: Any = None,
                        sender: str = "") -> None:
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace="/", data=[event, data]).encode()
        packet, attachments = (encoded[0], tuple(encoded[1:])) if isinstance(encoded, list) \
            else (encoded, ())
        skip = tuple(skip_sid) if isinstance(skip_sid, list | tuple) \
            else (() if skip_sid is None else (skip_sid,))
        envelope = Envelope(self.host_id, EMIT, room.name, position, skip, event, packet,
                            attachments, sender)
        self._post(channel_for(room.name), envelope.encode(), envelope.metric_kind, None)
        if position is None:
            await self._deliver(room.name, envelope)
        else:
            await self.holdback.arrived(room.name, position, envelope)

    async def revoke(self, room: Room, user_id: str) -> bool:
        """Have every other node take ``user_id``'s connections out of ``room``.

        True once Redis took the request: every node hosting the room handles it
        before any broadcast published after it. False when Redis cannot be reached.
        """
        done = asyncio.get_running_loop().create_future()
        sent = self._post(channel_for(room.name), self._revocation(room.name, user_id),
                          "revocation", done) and await done
        if not sent:
            self._keep_unsent(room.name, user_id)
        return sent

    async def ask(self, room: Room) -> None:
        """Have every other node hosting ``room`` send its members' awareness states
        again (:attr:`NodeHooks.asked`): this node has just begun to receive them."""
        envelope = Envelope(self.host_id, ASK, room.name)
        self._post(channel_for(room.name), envelope.encode(), envelope.metric_kind, None)

    def _revocation(self, room: str, user_id: str) -> bytes:
        return Envelope(self.host_id, REVOKE, room, user_id=user_id).encode()

    def _keep_unsent(self, room: str, user_id: str) -> None:
        """The role is gone from the store already: tell the others once Redis answers
        (a node that lost its channels meanwhile checks its rooms when it is back)."""
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
        self._outbox.append(("", None, "", done))
        self._outbox_ready.set()
        await done

    def _post(self, channel: str, data: bytes, kind: str,
              done: asyncio.Future[bool] | None) -> bool:
        if self._publish_failing:
            return False  # the probe closes the breaker once Redis answers
        if len(self._outbox) >= MAX_OUTBOX:
            if not self._outbox_full:
                log.warning("%d broadcasts wait for Redis; the next reach this node only",
                            len(self._outbox))
                self._outbox_full = True
            return False
        self._outbox_full = False
        self._outbox.append((channel, data, kind, done))
        self._outbox_ready.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_loop())
        return True

    async def _send_loop(self) -> None:
        """Publish the outbox in order, a batch per round trip."""
        batch: list[_Outgoing] = []
        try:
            while True:
                if not self._outbox:
                    self._outbox_ready.clear()
                    await self._outbox_ready.wait()
                    continue
                count = min(len(self._outbox), MAX_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                sent = await self._send(batch)
                self._settle(batch, sent)
                batch = []
                if not sent:  # the breaker is open: what waited behind goes nowhere either
                    self._settle([self._outbox.popleft() for _ in range(len(self._outbox))],
                                 False)
        finally:  # cancelled by close()
            self._settle(batch + list(self._outbox), False)
            self._outbox.clear()

    @staticmethod
    def _settle(batch: list[_Outgoing], sent: bool) -> None:
        for *_, done in batch:
            if done is not None and not done.done():
                done.set_result(sent)

    async def _send(self, batch: list[_Outgoing]) -> bool:
        messages = [(channel, data) for channel, data, _, _ in batch if data is not None]
        if not messages:
            return True
        try:
            await asyncio.wait_for(self.transport.publish(messages), SOCKET_TIMEOUT)
        except OUTAGES as exc:
            log.warning("cannot publish to Redis; broadcasts reach this node only "
                        "until it answers again: %s", exc)
            self._publish_failing = True
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self._probe_until_answered())
            return False
        except Exception:  # noqa: BLE001 - a refused command: drop these, go on
            log.exception("publishing %d broadcasts to Redis failed", len(messages))
            return False
        for _, data, kind, _ in batch:
            if data is not None:
                self._published[kind].inc()
        return True

    async def _probe_until_answered(self) -> None:
        """The breaker's probe: one PING at a time until Redis answers, then close it."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await asyncio.wait_for(self.transport.ping(), SOCKET_TIMEOUT)
            except Exception:  # noqa: BLE001 - any failure: still unreachable
                continue
            log.info("publishing to Redis again")
            self._publish_failing = False
            # all queued at once, before anything else can be: ahead of every broadcast
            # made from now on, and with no await that a new failure could fall into
            unsent, self._unsent_revocations = self._unsent_revocations, {}
            for room, user_id in unsent:
                done = asyncio.get_running_loop().create_future()
                if self._post(channel_for(room), self._revocation(room, user_id),
                              "revocation", done):
                    done.add_done_callback(functools.partial(self._resent, room, user_id))
                else:
                    self._keep_unsent(room, user_id)
            return

    # -- delivery ----------------------------------------------------------

    def _connected(self) -> bool:
        return self._linked.is_set()

    async def _deliver(self, room: str, envelope: Envelope) -> None:
        """Send one broadcast to this node's members of ``room``."""
        if envelope.host != self.host_id and room.endswith(LIVE_SUFFIX):
            await self.hooks.observe(room, envelope)
        receivers = room in self.receivers
        sockets = "/" in self.rooms  # (else nobody ever connected here)
        skip = list(envelope.skip) if envelope.position is None \
            else self.skipping(room, envelope.position, envelope.skip)
        if self.fast and not receivers:
            if sockets:
                self.deliver(envelope.packet, "/", room, skip, envelope.attachments)
            return
        pkt = self.server.packet_class(encoded_packet=envelope.packet)
        for attachment in envelope.attachments:
            pkt.add_attachment(attachment)
        event, *args = pkt.data
        data = args[0] if len(args) == 1 else tuple(args)
        self.to_receivers(room, event, data, skip)
        if not sockets:
            return
        if self.fast:
            self.deliver(envelope.packet, "/", room, skip, envelope.attachments)
            return
        await LocalBroadcaster.emit(self, event, data, "/", room=room, skip_sid=skip)

    async def _handle(self, data: bytes) -> None:
        """One message from a room channel."""
        if data.startswith(self._own):
            return  # our own, back from Redis: delivered here already
        envelope = Envelope.decode(data)
        if envelope is None:
            return  # not ours to read: another version, or not collab's
        self._received[envelope.metric_kind].inc()
        if envelope.kind == REVOKE:
            try:
                await self.hooks.revoked(envelope.room, envelope.user_id)
            except Exception:  # noqa: BLE001 - keep listening
                log.exception("revoking %s in %s failed", envelope.user_id, envelope.room)
        elif envelope.kind == ASK:
            try:
                await self.hooks.asked(envelope.room)
            except Exception:  # noqa: BLE001 - keep listening
                log.exception("sending the awareness states of %s again failed", envelope.room)
        elif envelope.position is None:
            await self._deliver(envelope.room, envelope)
        else:
            await self.holdback.arrived(envelope.room, envelope.position, envelope)

    # -- rooms and subscriptions -------------------------------------------

    async def enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> Any:
        if Room.parse(room) is None:  # a connection's own room, or python-socketio's None
            return await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        await self.holdback.enter(room, self.hooks.room_position,
                                  before_lookup=functools.partial(self._subscribe, room))
        return await super().enter_room(sid, namespace, room, eio_sid=eio_sid)

    async def leave_room(self, sid: str, namespace: str, room: Any) -> Any:
        result = await super().leave_room(sid, namespace, room)
        if Room.parse(room) is not None:
            self._room_idle(room)
        return result

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        # a disconnect takes the client out of its rooms without leave_room()
        rooms = self.get_rooms(sid, namespace or "/")
        result = await super().disconnect(sid, namespace, **kwargs)
        for room in rooms:
            if Room.parse(room) is not None:
                self._room_idle(room)
        return result

    async def add_receiver(self, room: str, receiver: Any) -> None:
        # as a Socket.IO member's entry: subscribed, and the room's position known
        await self.holdback.enter(room, self.hooks.room_position,
                                  before_lookup=functools.partial(self._subscribe, room))
        await super().add_receiver(room, receiver)

    async def remove_receiver(self, room: str, key: str) -> None:
        await super().remove_receiver(room, key)
        self._room_idle(room)

    def _hosted(self, room: str) -> bool:
        return self.hosts(room)

    def _room_idle(self, room: str) -> None:
        """Nothing is pending in ``room``: once no local member is left, let it go."""
        if not self._hosted(room) and self.holdback.forget(room) \
                and room in self.subscribed_rooms:
            task = asyncio.ensure_future(self._unsubscribe(room))
            self._unsubscribes.add(task)
            task.add_done_callback(self._unsubscribes.discard)

    async def _subscribe(self, room: str) -> None:
        """Subscribe to ``room``'s channel; return once Redis confirmed it (or at once
        while cut off from Redis: the listener subscribes it when it is back)."""
        async with self._subscriptions:
            if room in self.subscribed_rooms:
                return
            self.subscribed_rooms.add(room)
            link = self._link
            if link is None:
                return
            try:
                await asyncio.wait_for(link.subscribe([channel_for(room)]), SOCKET_TIMEOUT)
            except (*OUTAGES, LinkLost) as exc:  # the listener sees the loss and resubscribes
                log.debug("subscribing %s failed: %r", room, exc)

    async def _unsubscribe(self, room: str) -> None:
        async with self._subscriptions:
            # entered again meanwhile (its order is back), or already let go
            if room in self.holdback or room not in self.subscribed_rooms:
                return
            self.subscribed_rooms.discard(room)
            link = self._link
            if link is not None:
                try:
                    await asyncio.wait_for(link.unsubscribe([channel_for(room)]),
                                           SOCKET_TIMEOUT)
                except (*OUTAGES, LinkLost) as exc:  # a new link subscribes only what is wanted
                    log.debug("unsubscribing %s failed: %r", room, exc)

    async def _listen(self) -> None:
        """Keep a link to Redis subscribed to every hosted room, and read it."""
        delay = 0.1
        control = f"collab:node:{self.host_id}"
        while True:
            link = self.transport.link(control)
            try:
                async with self._subscriptions:
                    await link.open()
                    await asyncio.wait_for(
                        link.subscribe([channel_for(r) for r in self.subscribed_rooms]),
                        SOCKET_TIMEOUT)
                    self._link = link
                self._linked.set()
                if self._listen_failing:
                    log.info("receiving broadcasts from Redis again")
                    self._listen_failing = False
                    # what was published meanwhile is lost, revocations included
                    self._recheck = asyncio.ensure_future(self._resubscribed())
                delay = 0.1
                async for channel, data in link.messages():
                    if room_of(channel) is not None:
                        await self._handle(data)
            except (*OUTAGES, LinkLost) as exc:
                if not self._listen_failing:
                    log.warning("lost the Redis broadcast channels; retrying: %s", exc)
                    self._listen_failing = True
            except Exception:  # noqa: BLE001 - a bug of ours must not end listening
                log.exception("reading the Redis broadcast channels failed; retrying")
                self._listen_failing = True
            finally:
                self._linked.clear()
                self._link = None
                await link.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _resubscribed(self) -> None:
        try:
            await self.hooks.resubscribed()
        except Exception:  # noqa: BLE001 - nobody awaits this; the next outage tries again
            log.exception("checking access after the Redis channels came back failed")
