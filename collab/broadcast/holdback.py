"""Cross-node order: deliver a room's stored items by position, holding back early ones.

A message stored with seq 5 on node A and seq 6 on node B can reach node A as
6 then 5: A delivers its own broadcast after its store write returns, B's
arrives through Redis meanwhile. So each node delivers a room's positioned
broadcasts (``chat:message`` by seq, ``documents:updated`` by version) to its
clients in position order: it learns the room's position from the store when
its first local client enters the room, and holds back a broadcast until the
one before it has come.

A broadcast that never comes (its node died between storing and publishing,
or Redis dropped it) is given up on: nothing is held longer than
:data:`GAP_TIMEOUT` seconds in all. Before what comes after the gap, ``fill``
is told which positions were given up on (a live document's members cannot
do without a change: the node sends it from the store). While the node is cut off from Redis it
delivers as broadcasts come, since no other node's can fill a gap. A
broadcast older than the room's position (late, or already covered by what a
join read from the store) is delivered at once.

Why this is not :mod:`collab.broadcast.sequencer`: both deliver by position,
but the sequencer orders this node's own store calls, whose positions it
learns only as each call completes, and it knows which calls are still
running, so it never needs a timeout. Here the positions are known on arrival
but the calls behind them ran on other nodes: a gap can only be waited out.
The sequencer's output is this module's input (a node's own broadcasts go
through both, in that order), so the rule they share, "position order per
room", holds end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("collab.broadcast")

#: seconds a broadcast waits for the one before it before it is delivered anyway
GAP_TIMEOUT = 2.0

Item = TypeVar("Item")
#: ``room name -> its newest position`` (a chat's last seq, a document's version)
PositionLookup = Callable[[str], Awaitable["int | None"]]
#: ``(room name, positions)``: these broadcasts were given up on; deliver them if you can
Fill = Callable[[str, list[int]], Awaitable[None]]


async def _no_fill(room: str, positions: list[int]) -> None:
    return None


@dataclasses.dataclass(eq=False)
class RoomOrder(Generic[Item]):
    """Where one room's positioned broadcasts stand on this node."""

    #: the position delivered next; None: take the first that comes
    next: int | None = None
    #: position -> (item, loop time it arrived)
    held: dict[int, tuple[Item, float]] = dataclasses.field(default_factory=dict)
    #: set once ``next`` was read from the store
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    #: the last delivery scheduled: the next one runs after it
    tail: asyncio.Future[None] | None = None

    def idle(self) -> bool:
        return self.ready.is_set() and not self.held and (self.tail is None or self.tail.done())


class Holdback(Generic[Item]):
    """Every hosted room's :class:`RoomOrder`, and the deliveries they release.

    ``deliver(room, item)`` sends one item to the room's local members;
    ``connected()`` says whether broadcasts from other nodes can arrive now;
    ``on_idle(room)`` is told when a room's order has nothing pending any more
    (its owner then decides whether to forget it).
    """

    def __init__(self, deliver: Callable[[str, Item], Awaitable[None]],
                 connected: Callable[[], bool], on_idle: Callable[[str], None],
                 gap_timeout: float = GAP_TIMEOUT, fill: Fill = _no_fill) -> None:
        self._deliver = deliver
        self._fill = fill
        self._connected = connected
        self._on_idle = on_idle
        self.gap_timeout = gap_timeout
        self.rooms: dict[str, RoomOrder[Item]] = {}
        #: deliveries nobody awaits (after a join, a gap's timeout): the loop keeps
        #: only weak references to tasks, so these are held here until they end
        self._deliveries: set[asyncio.Future[None]] = set()

    def __contains__(self, room: str) -> bool:
        return room in self.rooms

    async def enter(self, room: str, lookup: PositionLookup,
                    before_lookup: Callable[[], Awaitable[None]] | None = None) -> None:
        """A local client enters ``room``: make sure its position is known.

        The first one reads it (after ``before_lookup``, which subscribes to the
        room's broadcasts, so that nothing falls between the read and the
        subscription); the others wait for that read. The caller's join reads
        the store after this, so its client misses nothing.
        """
        order = self.rooms.get(room)
        if order is not None:
            await order.ready.wait()
            return
        order = self.rooms[room] = RoomOrder()
        position = None
        try:
            if before_lookup is not None:
                await before_lookup()
            position = await lookup(room)
        except Exception as exc:  # noqa: BLE001 - deliver unordered rather than fail
            log.debug("no position for %s (%r); delivering as received", room, exc)
        finally:  # even if cancelled: other joins and held broadcasts wait for this
            order.next = None if position is None else position + 1
            order.ready.set()
            # what arrived during the read goes out now (the entering client's join
            # reads the store after this, so it has those already): even if the join
            # fails, nothing is left held without a timer
            if batch := self._take_ready(room, order):
                self._schedule(room, order, batch)

    async def arrived(self, room: str, position: int, item: Item) -> None:
        """A positioned broadcast for ``room``, from this node or another: deliver it in
        order (wait until it is out, unless it has to wait for an earlier one)."""
        order = self.rooms.get(room)
        if order is None:  # no local client in the room: nobody to deliver to in order
            await self._deliver(room, item)
            return
        if order.ready.is_set() and (
            (order.next is not None and position < order.next)
            # cut off from Redis: nothing from other nodes can fill a gap
            or (not self._connected() and not order.held)
        ):
            batch = [item]  # older than the room's position: late, or a replay
            if order.next is not None:
                order.next = max(order.next, position + 1)
        else:
            order.held[position] = (item, asyncio.get_running_loop().time())
            batch = self._take_ready(room, order)
        if batch:
            await self._schedule(room, order, batch)
        elif order.idle():
            self._on_idle(room)

    def forget(self, room: str) -> bool:
        """Drop ``room``'s order if nothing is pending; True when it is gone."""
        order = self.rooms.get(room)
        if order is None:
            return True
        if not order.idle():
            return False
        if order.timer is not None:
            order.timer.cancel()
        del self.rooms[room]
        return True

    def close(self) -> None:
        for order in self.rooms.values():
            if order.timer is not None:
                order.timer.cancel()
        self.rooms.clear()

    def _take_ready(self, room: str, order: RoomOrder[Item]) -> list[Item]:
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

    def _arm(self, room: str, order: RoomOrder[Item]) -> None:
        """Wake up when the oldest held broadcast has waited the gap timeout."""
        if order.timer is not None:
            order.timer.cancel()
            order.timer = None
        if order.held:
            loop = asyncio.get_running_loop()
            oldest = min(arrived for _, arrived in order.held.values())
            delay = max(0.0, oldest + self.gap_timeout - loop.time())
            order.timer = loop.call_later(delay, self._give_up_gap, room, order)

    def _give_up_gap(self, room: str, order: RoomOrder[Item]) -> None:
        """Deliver what waited too long, skipping the broadcasts that never came.

        Each held broadcast waits at most the gap timeout in all, however many
        gaps lie before it (after an outage there is one per lost message).
        """
        order.timer = None
        if not order.held:
            return
        due = asyncio.get_running_loop().time() - self.gap_timeout + 0.001
        overdue = [p for p, (_, arrived) in order.held.items() if arrived <= due]
        if not overdue:
            self._arm(room, order)
            return
        cutoff = max(overdue)
        log.debug("gave up waiting for %s positions %s..%s", room, order.next, cutoff)
        first = order.next if order.next is not None else min(order.held)
        missing = [p for p in range(first, cutoff) if p not in order.held]
        batch = [order.held.pop(p)[0] for p in sorted(p for p in order.held if p <= cutoff)]
        order.next = cutoff + 1
        self._schedule(room, order, batch + self._take_ready(room, order), missing)

    def _schedule(self, room: str, order: RoomOrder[Item], batch: list[Item],
                  missing: list[int] | None = None) -> asyncio.Future[None]:
        """Deliver ``batch`` after every delivery scheduled before it, for this room
        (after filling the ``missing`` positions a gap left before it)."""
        previous = order.tail
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order.tail = done

        async def run() -> None:
            try:
                if previous is not None:
                    await previous
                if missing:
                    try:
                        await self._fill(room, missing)
                    except Exception:  # noqa: BLE001 - what came after still goes out
                        log.exception("filling the gap in %s failed", room)
                for item in batch:
                    try:
                        await self._deliver(room, item)
                    except Exception:  # noqa: BLE001 - the next ones still go out
                        log.exception("delivering a broadcast to %s failed", room)
            finally:
                done.set_result(None)
                if order.idle() and self.rooms.get(room) is order:
                    self._on_idle(room)  # its last client may have gone meanwhile

        task = asyncio.ensure_future(run())
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task
